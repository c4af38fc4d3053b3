"""The agent's clocks and triggers: a spec watch, Docker's event stream, scans and passes.

- The GPUNode spec is watched, so a revocation reaches the kernel within the
  time of one enforcement pass, not one scan interval. Every new spec is saved
  to the state directory before it is applied.
- Docker's events trigger a pass on every container start, restart, unpause or
  update: the runtime rewrites a container's device rules when it restarts.
- Without triggers, a pass runs every `enforce_interval_s` anyway (rules can be
  rewritten behind our back, e.g. by systemd) and a scan every `interval_s`.

The apiserver being away changes nothing here but freshness: the watch retries
with backoff, the last policy stays in force, and entries whose own expiry
passes are closed by the passes themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from kubernetes import client, watch

from controller.agent.agent import Agent
from controller.agent.docker import DockerClient, DockerError
from controller.agent.publisher import PolicyView, policy_view
from controller.agent.state import PolicyStore
from controller.api.base import GROUP, VERSION

log = structlog.get_logger("ds01.agent")

RESTART_EVENTS = {"start", "restart", "unpause", "update"}


class Runner:
    def __init__(
        self,
        agent: Agent,
        api: client.ApiClient | None,
        store: PolicyStore | None,
        *,
        interval_s: float,
        enforce_interval_s: float,
        docker_socket: str | None,
    ) -> None:
        self.agent = agent
        self.api = api
        self.store = store
        self.interval_s = interval_s
        self.enforce_interval_s = enforce_interval_s
        self.docker_socket = docker_socket
        self.trigger = threading.Event()
        self._lock = threading.Lock()

    def set_policy(self, view: PolicyView) -> None:
        """A spec read from the API: save it, then apply it on the next pass (now)."""
        with self._lock:
            current = self.agent.policy
            if (
                current is not None
                and current.generation == view.generation
                and current.spec == view.spec
            ):
                return
            if self.store is not None:
                self.store.save(view, self.agent.node)
            self.agent.policy = view
            self.agent.reread_views()
        log.info("new policy", generation=view.generation, mode=view.spec.enforcement)
        self.trigger.set()

    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(target=self._watch_spec, args=(stop,), daemon=True, name="spec-watch")
        ]
        if self.docker_socket:
            threads.append(
                threading.Thread(
                    target=self._watch_docker, args=(stop,), daemon=True, name="docker-events"
                )
            )
        for thread in threads:
            thread.start()
        if self.agent.policy is None and self.agent.enforcer is not None:
            self.agent.enforcer.notify(
                "enforcement.no_policy",
                None,
                "no GPUNode spec yet (apiserver unreachable and nothing saved): this node only "
                "reports (Audit) until a policy arrives",
                "Warning",
                {"node": self.agent.node},
            )
        next_scan = 0.0
        while not stop.is_set():
            self._guard("enforcement pass", self.agent.enforce)
            if time.monotonic() >= next_scan:
                self._guard("scan", self.agent.scan)
                next_scan = time.monotonic() + self.interval_s
            self.trigger.wait(self.enforce_interval_s)
            self.trigger.clear()

    @staticmethod
    def _guard(what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:  # one failed pass must not stop the agent; the next retries
            log.exception(f"{what} failed")

    def _watch_spec(self, stop: threading.Event) -> None:
        if self.api is None or self.agent.publisher is None:
            return
        custom = client.CustomObjectsApi(self.api)
        backoff = 1.0
        while not stop.is_set():
            try:
                self.set_policy(self.agent.publisher.ensure_node())
                stream = watch.Watch().stream(
                    custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    "gpunodes",
                    field_selector=f"metadata.name={self.agent.node}",
                    timeout_seconds=300,
                )
                backoff = 1.0
                for event in stream:
                    if stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.set_policy(policy_view(event["object"]))
            except Exception as error:  # fail open: keep the last policy, retry
                log.warning(
                    "GPUNode watch interrupted; keeping the last policy",
                    error=str(error)[:300],
                    retry_in=backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _watch_docker(self, stop: threading.Event) -> None:
        assert self.docker_socket is not None
        docker = DockerClient(self.docker_socket)
        backoff = 1.0
        while not stop.is_set():
            try:
                for event in docker.events(since=time.time()):
                    if event.get("Action", event.get("status")) in RESTART_EVENTS:
                        self.trigger.set()
                    if stop.is_set():
                        return
                backoff = 1.0
            except (DockerError, ValueError) as error:
                log.warning("docker events interrupted", error=str(error)[:300], retry_in=backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
