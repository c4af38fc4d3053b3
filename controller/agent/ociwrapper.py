"""`ds01-runc`'s create path: close the bundle's GPU devices, then run the real runc.

Docker's default runtime on a DS01 host is a small shell front
(`controller.runtime.runcfront`) that passes every runc command straight through
except `create`, `run` and `restore`, which it hands here:

    python -m controller.agent.ociwrapper --runtime-dir DIR --runc PATH -- <runc arguments>

This reads the bundle's `config.json` and, when its rules open any GPU device,
asks the agent which GPU device numbers the container may open
(`controller.agent.runtimegate`), rewrites
`linux.resources.devices` so every other GPU number is denied
(`controller.policy.devicerules.rewrite`), and execs runc with the arguments it was
given. runc turns those rules into the container's device cgroup (v1) or eBPF
program (v2) before the container's first process runs.

What a GPU device is comes from `gpu-devices.json` (every GPU number, kept current by
the agent) and from /proc/devices (every minor of the driver's majors). Fail closed:
when the agent does not answer within ``--timeout`` seconds, all of them are denied;
only a table that says the node is in Audit or Off mode leaves the rules as they are.
Rules that cannot be read refuse the container, with the reason in runc's log (Docker
prints it).

It runs once per container start, inside `docker run`: so only a few standard
modules and the pure `devicerules` are imported (no pathlib, no dataclasses), and the
front starts Python isolated (`-I -S`: no environment variables, no site
packages, no `.pth` code), with the package's directory as its only addition.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, NamedTuple

from controller.policy.devicerules import (
    GpuDevices,
    Number,
    RuleError,
    driver_majors,
    left_open,
    opens_gpu,
    parse_rules,
    rewrite,
    to_oci,
)

CRI = "cri"
"""`--source=cri`: containerd's CRI plugin runs this for a kubelet (`runtime.runcfront`)."""
POD_ANNOTATIONS = {
    "namespace": "io.kubernetes.cri.sandbox-namespace",
    "name": "io.kubernetes.cri.sandbox-name",
    "container": "io.kubernetes.cri.container-name",
}
"""What containerd writes into a pod container's bundle, naming its pod."""
SYSTEM_NAMESPACES = frozenset({"kube-system", "ds01-system", "gpu-operator"})
"""Pods left alone, as attribution and the agent's passes leave them
(`policy.attribution.SYSTEM_NAMESPACES`, equal by test): the agent itself must
open GPUs when its own container is created, while no agent is there to ask."""
INTERCEPTED = frozenset({"create", "run", "restore"})
"""runc commands that build a container's cgroup from the bundle."""
GLOBAL_VALUE_FLAGS = frozenset({"log", "log-format", "root", "criu", "rootless"})
"""runc's global options that take a value (the others are booleans)."""
BUNDLE_FLAGS = frozenset({"-b", "--bundle"})
ENTITLEMENT = "the agent's entitlement"


class Options(NamedTuple):
    runtime_dir: str
    runc: str
    timeout_s: float = 3.0
    proc_devices: str = "/proc/devices"
    source: str = "docker"


class Invocation(NamedTuple):
    """What runc was asked to do, read from its arguments."""

    command: str | None
    bundle: str
    container: str | None
    log: str | None


def invocation(args: list[str], cwd: str) -> Invocation:
    """The command, bundle (runc's default: the working directory), container id and log."""
    command, log, index = None, None, 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("-"):
            command = arg
            break
        name, _, value = arg.lstrip("-").partition("=")
        if name in GLOBAL_VALUE_FLAGS and not value:
            index += 1
            value = args[index] if index < len(args) else ""
        if name == "log":
            log = value
        index += 1
    rest = args[index + 1 :]
    bundle = cwd
    for position, arg in enumerate(rest):
        flag, _, value = arg.partition("=")
        if flag in BUNDLE_FLAGS:
            bundle = value or (rest[position + 1] if position + 1 < len(rest) else ".")
    container = rest[-1] if rest and not rest[-1].startswith("-") else None
    return Invocation(command, os.path.join(cwd, bundle), container, log)


def ask_agent(options: Options, question: dict[str, Any]) -> dict[str, Any] | None:
    """The agent's answer, or None when it did not give one in time (or gave an error)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(options.timeout_s)
            sock.connect(os.path.join(options.runtime_dir, "agent.sock"))
            sock.sendall(json.dumps(question).encode() + b"\n")
            data = b""
            deadline = time.monotonic() + options.timeout_s
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(answer, dict) or "error" in answer:
        return None
    return answer


def _numbers(value: object) -> frozenset[Number]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset((int(n[0]), int(n[1])) for n in value if isinstance(n, list) and len(n) == 2)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def read_table(options: Options) -> dict[str, Any]:
    """The agent's last `gpu-devices.json` ({} when there is none or it is unreadable)."""
    try:
        table = json.loads(_read(os.path.join(options.runtime_dir, "gpu-devices.json")))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _mapped(linux: dict[str, Any]) -> list[list[int]]:
    """The character device nodes the bundle creates in the container, as [major, minor]."""
    numbers = {
        (int(d["major"]), int(d["minor"]))
        for d in linux.get("devices") or []
        if d.get("type") in ("c", "u") and "major" in d and "minor" in d
    }
    return [list(n) for n in sorted(numbers)]


def pod_of(config: dict[str, Any]) -> dict[str, str] | None:
    """The pod a CRI container belongs to, from containerd's annotations (None: not a pod's)."""
    annotations = config.get("annotations") or {}
    pod = {key: annotations.get(name) for key, name in POD_ANNOTATIONS.items()}
    if not all(isinstance(v, str) and v for v in (pod["namespace"], pod["name"])):
        return None
    return {k: v for k, v in pod.items() if isinstance(v, str)}


def close_bundle(options: Options, call: Invocation) -> list[str]:
    """Rewrite the bundle's device rules; warnings to log (the create goes on).

    A bundle that opens no GPU device (most containers) is left untouched and the
    agent is not asked: its entitlement could not change anything.
    """
    path = os.path.join(call.bundle, "config.json")
    config = json.loads(_read(path))
    linux = config.setdefault("linux", {})
    resources = linux.setdefault("resources", {})
    rules = parse_rules(resources.get("devices"))
    table = read_table(options)
    try:
        majors = driver_majors(_read(options.proc_devices))
    except OSError:
        majors = frozenset()
    known = GpuDevices(_numbers(table.get("numbers")), majors)
    if not opens_gpu(rules, known):
        return []
    uid = ((config.get("process") or {}).get("user") or {}).get("uid")
    question: dict[str, Any] = {
        "container": call.container,
        "uid": uid if isinstance(uid, int) else None,
        "mapped": _mapped(linux),
    }
    if options.source == CRI:
        pod = pod_of(config)
        if pod is not None and pod["namespace"] in SYSTEM_NAMESPACES:
            return []
        question["pod"] = pod
    answer = ask_agent(options, question)
    warnings = []
    if answer is None:
        if table.get("mode") in ("Audit", "Off"):
            return []  # the node only reports: nothing would be closed
        gpu, allowed = known, frozenset[Number]()
        warnings.append("ds01-runc: no answer from the agent: every GPU closed (fail closed)")
    elif answer.get("allowed") is None:
        return []  # Audit or Off: the agent reports, nothing is closed
    else:
        gpu = GpuDevices(_numbers(answer.get("numbers")) | known.numbers, majors)
        allowed = _numbers(answer.get("allowed"))
    closed = rewrite(rules, gpu, allowed)
    resources["devices"] = [to_oci(rule) for rule in closed]
    tmp = path + ".ds01"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(config, out)
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)
    if stuck := left_open(closed, gpu, allowed):
        shown = ", ".join(f"{a}:{b}" for a, b in stuck)
        warnings.append(f"ds01-runc: GPU devices {shown} stay open: runc always allows them")
    return warnings


def write_log(log: str | None, level: str, message: str) -> None:
    """A line in runc's own log format (Docker shows the last error line on failure).

    Never stdout or stderr: at `create`, runc's standard streams are the container's.
    """
    if log is None:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"level": level, "msg": message, "time": stamp}) + "\n")
    except OSError:
        pass


def parse_options(argv: list[str]) -> tuple[Options, list[str]]:
    """Our own options, then `--`, then runc's arguments untouched."""
    if "--" not in argv:
        raise SystemExit("usage: ociwrapper --runtime-dir DIR --runc PATH [--timeout S] -- ARGS")
    split = argv.index("--")
    values: dict[str, str] = {}
    for arg in argv[:split]:
        name, _, value = arg.lstrip("-").partition("=")
        values[name] = value
    options = Options(
        runtime_dir=values.get("runtime-dir", "/run/ds01-agent"),
        runc=values.get("runc", "runc"),
        timeout_s=float(values.get("timeout", "3")),
        proc_devices=values.get("proc-devices", "/proc/devices"),
        source=values.get("source", "docker"),
    )
    return options, argv[split + 1 :]


def main(argv: list[str] | None = None) -> int:
    options, runc_args = parse_options(sys.argv[1:] if argv is None else argv)
    call = invocation(runc_args, os.getcwd())
    if call.command in INTERCEPTED and call.container:
        try:
            for warning in close_bundle(options, call):
                write_log(call.log, "warning", warning)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            # Fail closed: a container whose rules cannot be judged does not start.
            reason = error if isinstance(error, RuleError) else f"{type(error).__name__}: {error}"
            write_log(call.log, "error", f"ds01-runc: refusing the container: {reason}")
            return 1
    os.execvp(options.runc, [options.runc, *runc_args])
    return 127  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
