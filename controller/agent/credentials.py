"""The agent picks up renewed credentials without a restart.

On a Docker host the agent's kubeconfig holds a client certificate that
`ds01 agent credentials` (a systemd timer) replaces before it expires. The
Kubernetes client reads a kubeconfig once, so the agent checks the file
every `interval_s` and, when it changed, swaps a client built from the new
file into the ApiClient every component shares: their next request uses the
new certificate. Requests in flight (a watch) finish on the old connection.
A file that cannot be read leaves the current credentials in use.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import structlog
from kubernetes import client, config
from kubernetes.client import rest

from controller.policy.agentidentity import renewal
from controller.runtime.agentcredentials import AgentCredentials

log = structlog.get_logger("ds01.agent.credentials")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def describe(path: Path) -> dict[str, str]:
    """Who the kubeconfig's certificate makes us, and until when (empty for a token)."""
    try:
        credentials = AgentCredentials.read(path)
        standing = renewal(credentials.not_before, credentials.not_after, datetime.now(UTC))
    except ValueError:
        return {}
    return {"user": credentials.user, "certificate": standing.describe()}


class CredentialReloader:
    """Swaps ``api``'s REST client when ``kubeconfig`` changes on disk."""

    def __init__(self, api: client.ApiClient, kubeconfig: Path, interval_s: float = 30.0) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.interval_s = interval_s
        self._seen = _stamp(kubeconfig)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Reload if the file changed since the last look; returns whether it did."""
        stamp = _stamp(self.kubeconfig)
        if stamp is None or stamp == self._seen:
            return False
        loaded = client.Configuration()
        try:
            config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=loaded)
        except Exception as error:  # any unreadable file keeps what works
            log.warning(
                "cannot read the renewed kubeconfig; keeping the current credentials",
                kubeconfig=str(self.kubeconfig),
                error=str(error)[:300],
            )
            return False
        self._seen = stamp
        self.api.configuration = loaded
        self.api.rest_client = rest.RESTClientObject(loaded)
        log.info(
            "credentials reloaded", kubeconfig=str(self.kubeconfig), **describe(self.kubeconfig)
        )
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def start(self) -> None:
        log.info("credentials", kubeconfig=str(self.kubeconfig), **describe(self.kubeconfig))
        self._thread = threading.Thread(target=self._loop, daemon=True, name="credentials")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
