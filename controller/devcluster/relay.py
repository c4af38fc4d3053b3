"""A TCP relay from the pod bridge to the apiserver on loopback, for the embedded node's pods.

The apiserver listens on 127.0.0.1 only, which a pod's network namespace
cannot reach, and there is no kube-proxy to make the `kubernetes` Service's
address work. So pods that talk to the API (the operator, the agent) are told
(`KUBERNETES_SERVICE_HOST`/`PORT` in the local overlay) to use this relay on the
bridge's address, which only this host and its pods can reach. Bytes pass
through unchanged: TLS is between the pod and the apiserver (whose certificate
names the bridge's address).

    python -m controller.devcluster.relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(relay, *listen, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve((args[0], int(args[1])), (args[2], int(args[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
