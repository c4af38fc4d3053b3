"""`ds01 agent`: the node agent (a DaemonSet pod, or a systemd service on a Docker host)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.cli import agentcreds, auditflags, options


def _run(args: argparse.Namespace) -> int:
    from controller.agent.main import AgentOptions, run
    from controller.runtime import logs

    sources = options.resolve(args)  # flags, then $DS01_*, then defaults; exits 2 if bad
    logs.configure(args.log_level)
    options.log_effective("ds01.agent", args, sources)
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    return run(
        AgentOptions(
            node=args.node,
            kubeconfig=args.kubeconfig,
            nvml_library=args.nvml_library,
            proc_root=args.proc_root,
            driver_proc_root=args.driver_proc_root,
            dev_root=args.dev_root,
            host_dev_root=args.host_dev_root,
            cgroup_root=args.cgroup_root,
            passwd=args.passwd,
            docker_socket=args.docker_socket,
            device_plugin_dir=args.device_plugin_dir,
            pod_resources_socket=args.pod_resources_socket,
            gateway_key=args.gateway_key,
            audit_log=args.audit_log,
            metrics_port=args.metrics_port,
            state_dir=args.state_dir,
            interval_s=args.interval,
            enforce_interval_s=args.enforce_interval,
            grace_s=args.grace,
            kill_grace_s=args.kill_grace,
            lifecycle_interval_s=args.lifecycle_interval,
            gateway_socket=args.gateway_socket,
            gateway_admin_group=args.gateway_admin_group,
            gateway_bind_roots=tuple(args.gateway_bind_root or ("{home}",)),
            gateway_socket_mode=args.gateway_socket_mode,
            gateway_socket_group=args.gateway_socket_group,
            gateway_devices=tuple(args.gateway_allow_device or ()),
            gateway_capabilities=tuple(args.gateway_allow_capability)
            if args.gateway_allow_capability is not None
            else None,
            gateway_runtime=args.gateway_runtime,
            gateway_host_etc=args.gateway_host_etc,
            runtime_dir=args.runtime_dir,
            log_level=args.log_level,
            audit=auditflags.settings(args),
        )
    )


def register(commands: Any) -> None:
    parser = commands.add_parser("agent", help="run the node agent")
    parser.add_argument("--node", required=True, help="this node's name (its GPUNode's name)")
    parser.add_argument("--kubeconfig", type=Path, help="default: the pod's ServiceAccount")
    parser.add_argument(
        "--nvml-library", type=Path, help="libnvidia-ml.so.1 to load (default: the system's)"
    )
    parser.add_argument("--proc-root", type=Path, default=Path("/proc"))
    parser.add_argument(
        "--driver-proc-root",
        type=Path,
        help="where /proc/devices and /proc/driver/nvidia-caps are read (default: --proc-root)",
    )
    parser.add_argument("--dev-root", type=Path, default=Path("/dev"))
    parser.add_argument(
        "--host-dev-root",
        type=Path,
        help="the host's path of the directory --dev-root shows, when the agent sees it"
        " elsewhere: the device plugin and the Docker gateway name host paths (default: /dev"
        " for the kubelet, --dev-root itself for Docker)",
    )
    parser.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"))
    parser.add_argument(
        "--passwd",
        type=Path,
        default=Path("/etc/passwd"),
        help="the host's passwd file, to map process UIDs to logins",
    )
    parser.add_argument("--docker-socket", help="the engine's socket, e.g. /run/docker.sock")
    parser.add_argument(
        "--device-plugin-dir",
        type=Path,
        help="kubelet's device-plugin directory (serve the device plugin)",
    )
    parser.add_argument(
        "--pod-resources-socket",
        type=Path,
        help="kubelet's pod-resources socket (attribute pods' devices)",
    )
    parser.add_argument(
        "--gateway-key",
        type=Path,
        help="key the Docker gateway signs owner labels with (root-only file)",
    )
    parser.add_argument("--state-dir", type=Path, help="state kept across restarts")
    parser.add_argument("--audit-log", type=Path, help="JSON-lines audit file (default: the log)")
    parser.add_argument("--metrics-port", type=options.port)
    # Durations in the project's one syntax (5s, 500ms, 5m, 0), passed on as seconds.
    parser.add_argument("--interval", type=options.seconds, default="5s", help="between scans")
    parser.add_argument(
        "--enforce-interval",
        type=options.seconds,
        default="2s",
        help="between enforcement passes when nothing triggers one",
    )
    parser.add_argument(
        "--grace",
        type=options.seconds,
        default="5m",
        help="before GPU use whose right ended without a revocation is ended "
        "(never-granted use is ended at once)",
    )
    parser.add_argument(
        "--kill-grace",
        type=options.seconds,
        default="10s",
        help="between SIGTERM and SIGKILL for processes outside containers",
    )
    parser.add_argument(
        "--lifecycle-interval",
        type=options.seconds,
        default="5m",
        help="between idle/runtime checks of GPU containers (0: no lifecycle here)",
    )
    gateway = parser.add_argument_group(
        "Docker gateway",
        "serve a Docker API socket for users in front of the engine's (Docker hosts)",
    )
    gateway.add_argument(
        "--gateway-socket",
        type=Path,
        help="the socket users' docker CLI talks to, e.g. /run/docker.sock",
    )
    gateway.add_argument(
        "--gateway-admin-group",
        help="Linux group whose members (and root) pass through unchanged",
    )
    gateway.add_argument(
        "--gateway-bind-root",
        action="append",
        help="host path users may bind-mount ({home} and {login} are filled in); repeatable; "
        "default {home}",
    )
    gateway.add_argument(
        "--gateway-socket-mode",
        type=options.octal_mode,
        default=0o666,
        help="octal mode of the gateway socket (default 666)",
    )
    gateway.add_argument("--gateway-socket-group", help="group owning the gateway socket")
    gateway.add_argument(
        "--gateway-allow-device",
        action="append",
        metavar="PATH",
        help="a host device users may map with --device (repeat; none by default)",
    )
    gateway.add_argument(
        "--gateway-allow-capability",
        action="append",
        metavar="CAP",
        help="a capability users may add (repeat; default: Docker's defaults, IPC_LOCK, SYS_NICE)",
    )
    gateway.add_argument(
        "--gateway-runtime",
        metavar="NAME",
        help="the runtime every user container runs under (e.g. the ds01 device-rule wrapper)",
    )
    parser.add_argument(
        "--gateway-host-etc",
        type=Path,
        help="the host's /etc where the agent sees it mounted (in a pod): the gateway reads"
        " users and groups from its passwd and group files (default: this system's NSS)",
    )
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        help="answer the runtime wrapper ds01-runc here (its socket and fail-closed table), "
        "e.g. /run/ds01-agent",
    )
    parser.add_argument(
        "--log-level", type=options.log_level, default="INFO", help="DEBUG, INFO, WARNING, ERROR"
    )
    parser.set_defaults(run=_run)
    auditflags.add(parser)
    options.with_environment(parser)  # keep last: it covers every option added above
    agentcreds.register(parser)  # `ds01 agent enroll|credentials`: their own options only
