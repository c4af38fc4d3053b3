"""The grant churn: each planned operation sent at its time, by the account that would send it.

Owners create, revoke and delete their grants with their own certificates; the
approver approves and denies. A dispatcher thread keeps the plan's pace and hands
each operation to a pool of clients. An operation that cannot reach the
apiserver (stopped, restarting) is retried until it lands, as a person at
`kubectl` would: a create that landed before its answer was lost answers 409
next time, a delete 404, and both count as done. Any other refusal is kept as
an error: the run's checks expect none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from urllib3.exceptions import HTTPError

from controller.devcluster.process import wait_until
from tests.chaos.plan import FOLLOW_UP, GrantPlan, Plan
from tests.chaos.rig import Account
from tests.controlplane.kube import GROUP, VERSION

RETRYABLE = {429, 500, 502, 503, 504}
STARTING = {401, 403}
STARTING_S = 30.0
"""A restarted apiserver answers before its authorizer has loaded RBAC: for a while it
refuses everyone (the controller-manager and the operator too). Such refusals are
retried for this long; one that lasts longer is a real refusal."""
TIMEOUT_S = 10


@dataclass
class Churn:
    plan: Plan
    accounts: list[Account]
    approver: client.CustomObjectsApi
    deadline_s: float
    """How long one operation may keep retrying (longer than the outage)."""
    issued: int = 0
    done: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _created: dict[int, threading.Event] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self, t0: float) -> None:
        self._created = {g.index: threading.Event() for g in self.plan.grants}
        self._thread = threading.Thread(target=self._dispatch, args=(t0,), daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the churn did not finish within {timeout_s:.0f}s")

    @property
    def total(self) -> int:
        return sum(1 + (g.follow_at is not None) for g in self.plan.grants)

    def _operations(self) -> list[tuple[float, Callable[[], None], str]]:
        ops: list[tuple[float, Callable[[], None], str]] = []
        for g in self.plan.grants:
            ops.append((g.create_at, lambda g=g: self._create(g), f"create {g.name}"))  # type: ignore[misc]
            if g.follow_at is not None:
                what = f"{FOLLOW_UP[g.kind]} {g.name}"
                ops.append((g.follow_at, lambda g=g: self._follow(g), what))  # type: ignore[misc]
        return sorted(ops, key=lambda op: op[0])

    def _dispatch(self, t0: float) -> None:
        pending: list[Future[None]] = []
        with ThreadPoolExecutor(6, thread_name_prefix="churn") as pool:
            for at, operation, what in self._operations():
                delay = t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the plan's pace, not a wait for state
                with self._lock:
                    self.issued += 1
                pending.append(pool.submit(self._run, operation, what))
            for future in pending:
                future.result()
        self.finished_at = time.monotonic()

    def _run(self, operation: Callable[[], None], what: str) -> None:
        try:
            operation()
        except Exception as error:  # kept for the checks; the churn goes on
            with self._lock:
                self.errors.append(f"{what}: {error}"[:300])
        with self._lock:
            self.done += 1

    def _until_landed(self, send: Callable[[], Any], ok: set[int], what: str) -> None:
        """Send until the apiserver answers; statuses in ``ok`` count as done."""

        refused_since: list[float] = []

        def attempt() -> bool:
            try:
                send()
            except client.ApiException as error:
                if error.status in ok:
                    return True
                if error.status in RETRYABLE:
                    self._retried()
                    return False
                if error.status in STARTING and _within(refused_since, STARTING_S):
                    self._retried()
                    return False
                raise
            except (HTTPError, OSError):
                self._retried()
                return False
            return True

        wait_until(attempt, self.deadline_s, f"{what} to reach the apiserver", 0.5)

    def _retried(self) -> None:
        with self._lock:
            self.retries += 1

    def _create(self, g: GrantPlan) -> None:
        account = self.accounts[g.user]
        spec: dict[str, Any] = {
            "subject": {"kind": "User", "name": account.user},
            "gpus": {"count": 1},
            "duration": g.duration,
            "reason": f"chaos {g.kind}",
        }
        if g.reserve:
            spec["placement"] = {"reserve": True, "nodeSelector": {"gpu.ds01.io/chaos": "true"}}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPUGrant",
            "metadata": {"name": g.name},
            "spec": spec,
        }
        self._until_landed(
            lambda: account.custom.create_namespaced_custom_object(
                GROUP, VERSION, account.namespace, "gpugrants", body, _request_timeout=TIMEOUT_S
            ),
            {409},
            f"create {g.name}",
        )
        self._created[g.index].set()

    def _follow(self, g: GrantPlan) -> None:
        if not self._created[g.index].wait(self.deadline_s):
            raise TimeoutError(f"{g.name} was never created")
        account = self.accounts[g.user]
        ns, action = account.namespace, FOLLOW_UP[g.kind]
        if action == "delete":
            self._until_landed(
                lambda: account.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, "gpugrants", g.name, _request_timeout=TIMEOUT_S
                ),
                {404},
                f"delete {g.name}",
            )
            return
        if action == "revoke":
            who, spec = account.custom, {"revocation": {"reason": "chaos: revoked by its owner"}}
        else:
            decision = "Approved" if action == "approve" else "Denied"
            who, spec = self.approver, {"approval": {"decision": decision, "note": "chaos"}}
        self._until_landed(
            lambda: who.patch_namespaced_custom_object(
                GROUP, VERSION, ns, "gpugrants", g.name, {"spec": spec}, _request_timeout=TIMEOUT_S
            ),
            set(),
            f"{action} {g.name}",
        )


def _within(since: list[float], seconds: float) -> bool:
    """True while less than ``seconds`` passed since the first call (recorded in ``since``)."""
    now = time.monotonic()
    if not since:
        since.append(now)
    return now - since[0] < seconds
