"""Generate the Python modules of the kubelet APIs from our .proto files, or prove they are current.

`python -m controller.agent.deviceplugin.codegen` rewrites
`controller/agent/deviceplugin/proto/*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py`;
`--check` only compares (exit 1 and a diff when they drift), like `ds01 crds check`.

The generated modules are committed so that production nodes need no
grpcio-tools. protoc is run with the repository root as include path, so the
generated imports are absolute (`from controller.agent.deviceplugin.proto import ...`)
and each file's descriptor name is its repository path, unique in protobuf's
process-wide pool even though both kubelet APIs call their file `api.proto`.

Generated text depends on the grpcio-tools version (it stamps the protobuf
gencode version and the minimum grpcio into the files), which is why the
dev dependency on grpcio-tools must be pinned exactly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from controller.runtime.drift import text_diffs

PACKAGE_DIR = Path(__file__).resolve().parent / "proto"
"""Where the .proto sources and the generated modules live."""
REPO_ROOT = PACKAGE_DIR.parents[3]
"""The include root: makes generated imports `controller.agent.deviceplugin.proto...`."""
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos() -> list[Path]:
    """The .proto sources, sorted, so generation is deterministic."""
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate() -> dict[str, str]:
    """File name -> text of every generated module, from a fresh protoc run.

    protoc writes into a temporary directory; nothing in the tree changes.
    grpc_tools is imported here, not at module level: it is a development
    dependency, and the agent never runs this.
    """
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    relative = [str(p.relative_to(REPO_ROOT)) for p in protos()]
    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *relative,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {relative}")
        generated = Path(out) / PACKAGE_DIR.relative_to(REPO_ROOT)
        return {p.name: p.read_text() for p in sorted(generated.iterdir()) if p.is_file()}


def committed() -> dict[str, str]:
    """File name -> text of the generated modules currently in the tree."""
    return {
        p.name: p.read_text()
        for p in sorted(PACKAGE_DIR.iterdir())
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def drift() -> list[str]:
    """Unified diffs between the committed modules and a fresh generation (empty when equal)."""
    return text_diffs(committed(), generate(), "generated")


def write() -> list[str]:
    """Replace the committed modules with a fresh generation; returns the names written."""
    fresh = generate()
    for stale in committed().keys() - fresh.keys():
        (PACKAGE_DIR / stale).unlink()
    for name, text in fresh.items():
        (PACKAGE_DIR / name).write_text(text)
    return sorted(fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        diffs = drift()
        if diffs:
            sys.stdout.write("".join(diffs))
            print(
                "generated kubelet API modules differ: run "
                "`python -m controller.agent.deviceplugin.codegen` and commit",
                file=sys.stderr,
            )
            return 1
        print("generated kubelet API modules are current")
        return 0
    for name in write():
        print(f"wrote {PACKAGE_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
