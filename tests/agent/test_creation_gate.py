"""No window at container start, and no grace for GPU use that was never granted.

The engine runs containers under `ds01-runc` (its default runtime, as on a DS01
host): on every create it asks the agent what the container may open and closes the
rest in the bundle's device rules, which runc applies before the container's first
process. No enforcement pass runs in these tests unless a test calls one, so an
open refused at a container's first instruction was refused by the rules it was
created with. Fake GPUs are real misc devices: an allowed open succeeds, a denied
one fails with EPERM.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.agent.runtimegate import RuntimeGate
from controller.agent.trust import sign
from controller.devcluster.process import wait_until
from tests.agent.enforcehost import KEY, Node
from tests.agent.engine import IMAGE
from tests.agent.gatewayhost import AMY, GatewayHost

FIRST_OPEN = "if command exec 3<>/dev/gpu0; then echo OPEN; else echo DENIED; fi"
STARTS = 20
OWNER = "amy@lab.example"


def run_first(node: Node, *argv: str, command: str = FIRST_OPEN) -> str:
    """`docker run --rm` on the engine's own socket (as an admin would): its output."""
    result = subprocess.run(
        node.engine.docker_command(
            "run", "--rm", "--network", "none", *argv, IMAGE, "sh", "-c", command
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def signed(owner: str, devices: list[str]) -> list[str]:
    """A name and labels as the gateway signs them."""
    name = f"c-{uuid.uuid4().hex[:8]}"
    argv = ["--name", name]
    for key, value in sign(KEY, name, owner, devices).items():
        argv += ["--label", f"{key}={value}"]
    return argv


def gate_of(node: Node) -> RuntimeGate:
    gate = getattr(node.agent.on_pass, "__self__", None)
    assert isinstance(gate, RuntimeGate), "the agent was built without --runtime-dir"
    return gate


def test_a_gpu_mapped_behind_the_gateways_back_is_closed_at_the_first_instruction(
    node: Node,
) -> None:
    _, path = node.gpu(2)
    node.policy()
    answers = [run_first(node, "--device", f"{path}:/dev/gpu0") for _ in range(STARTS)]
    assert all("DENIED" in a and "Operation not permitted" in a for a in answers), answers
    assert node.audit_types().count("access.closed_at_create") == STARTS


def test_an_entitled_container_opens_its_gpu_at_the_first_instruction_and_no_other(
    node: Node,
) -> None:
    (gpu, path), (_, other) = node.gpu(3), node.gpu(4)
    node.policy()
    mine = signed(OWNER, [gpu])
    assert "OPEN" in run_first(node, *mine, "--device", f"{path}:/dev/gpu0")
    both = [
        *signed(OWNER, [gpu]),
        "--device",
        f"{path}:/dev/gpu1",
        "--device",
        f"{other}:/dev/gpu0",
    ]
    assert "Operation not permitted" in run_first(node, *both)
    # Audit mode closes nothing at creation: it only reports.
    node.policy(enforcement="Audit")
    assert "OPEN" in run_first(node, "--device", f"{other}:/dev/gpu0")


def test_with_the_agent_not_answering_the_wrapper_fails_closed(node: Node) -> None:
    gpu, path = node.gpu(5)
    node.policy()
    node.agent.enforce()  # publishes the table: Enforce, every GPU number
    gate = gate_of(node)
    gate.stop()
    mine = signed(OWNER, [gpu])  # entitled, but nobody can say so
    for _ in range(3):
        assert "Operation not permitted" in run_first(node, *mine, "--device", f"{path}:/dev/gpu0")
    # On cgroup v1 the agent's next pass opens what a container closed meanwhile is entitled to.
    waiting = node.container(OWNER, [gpu], [path])
    assert "Operation not permitted" in node.opens(waiting, 0)
    node.agent.enforce()
    assert node.opens(waiting, 0) == "OPEN"
    # A node whose last published mode is Audit is left as it was.
    node.policy(enforcement="Audit")
    gate.publish()
    assert "OPEN" in run_first(node, "--device", f"{path}:/dev/gpu0")


def test_through_the_gateway_gpus_1_opens_its_gpu_at_the_first_instruction(
    gateway: GatewayHost,
) -> None:
    script = (
        "for d in /dev/nvidia[0-9]*; do "
        'if command exec 3<>"$d"; then echo "OPEN $d"; else echo "DENIED $d"; fi; done'
    )
    out = gateway.ok(
        AMY, "run", "--rm", "--network", "none", "--gpus", "1", IMAGE, "sh", "-c", script
    )
    assert out.startswith("OPEN /dev/nvidia") and "DENIED" not in out, out


def test_a_holder_that_was_never_granted_is_ended_without_the_revocation_grace(
    node: Node,
) -> None:
    """A container started under plain runc (bypassing the wrapper, as only root can) that
    holds a GPU nobody gave it: stopped at the first pass, not five minutes later."""
    _, path = node.gpu(6)
    node.agent.enforcer.grace = timedelta(minutes=5)  # type: ignore[union-attr]
    node.policy()
    name = f"c-{uuid.uuid4().hex[:8]}"
    container = node.engine.docker(
        "run", "-d", "--runtime", "runc", "--network", "none", "--name", name,
        "--device", f"{path}:/dev/gpu0", IMAGE, "sh", "-c", "exec 3<>/dev/gpu0 && sleep 600",
    )  # fmt: skip
    node.containers.append(container)
    started = datetime.now(UTC)
    ended = []

    def stopped() -> bool:
        outcome = node.agent.enforce()
        assert outcome is not None
        ended.extend(e for e in outcome.ended if e.holder.place.container_id == container)
        state = node.engine.client.inspect(container)
        return state is not None and not state.running

    wait_until(stopped, 60, "the never-granted holder to be stopped")
    assert datetime.now(UTC) - started < timedelta(minutes=1)  # not the 5-minute grace
    assert ended and all(e.never_granted for e in ended)  # it held the GPU, and was ended
    types = node.audit_types()
    assert "access.end_unentitled" in types and "access.revoke_warning" not in types


def test_a_holder_whose_grant_ended_is_warned_and_keeps_its_grace(
    node: Node, tmp_path: Path
) -> None:
    """Reserved to its owner, then the reservation is gone from the spec with no revocation
    (an exemption the operator dropped): the agent remembers the right, so: warn, wait."""
    gpu, path = node.gpu(2)
    node.agent.enforcer.grace = timedelta(minutes=5)  # type: ignore[union-attr]
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    source = {"kind": "GPUGrant", "name": "amy-grant", "namespace": "u-amy"}
    node.policy(reservations=[{"deviceUUID": gpu, "user": OWNER, "until": until, "source": source}])
    name = f"c-{uuid.uuid4().hex[:8]}"
    labels = sign(KEY, name, OWNER, [])  # the owner's, with no device of its own
    argv = ["run", "-d", "--network", "none", "--name", name, "--device", f"{path}:/dev/gpu0"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    container = node.engine.docker(*argv, IMAGE, "sh", "-c", "exec 3<>/dev/gpu0 && sleep 600")
    node.containers.append(container)

    def held_and_entitled() -> bool:
        outcome = node.agent.enforce()
        return outcome is not None and bool(outcome.decision.entitled_holders)

    wait_until(held_and_entitled, 30, "the agent to see the reserved holder")
    node.policy(generation=2)  # the reservation is gone; no revocation says why
    first = node.agent.enforce()
    assert first is not None and len(first.warned) == 1 and not first.ended
    (warned,) = first.warned
    assert not warned.never_granted and warned.at - datetime.now(UTC) > timedelta(minutes=4)
    for _ in range(3):
        outcome = node.agent.enforce()
        assert outcome is not None and not outcome.ended
    state = node.engine.client.inspect(container)
    assert state is not None and state.running
    assert "access.revoke_warning" in node.audit_types()
    assert "Operation not permitted" in node.opens(container, 0)  # new opens are closed
