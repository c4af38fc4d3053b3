"""`ds01 agent enroll` and `ds01 agent credentials`: a Docker-host agent's certificate.

`enroll` runs once per host, with a cluster admin's kubeconfig, and writes the
agent's own kubeconfig (default /etc/ds01/agent.kubeconfig). `credentials`
runs from a systemd timer with the agent's kubeconfig and renews the
certificate once it is due. Exit status: 0 done (or nothing due), 1 failed or
denied, 3 still waiting for approval (run again to collect; the key is kept).
`docs/docker-host.md` ("Credentials") walks through both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli import options

DEFAULT_KUBECONFIG = Path("/etc/ds01/agent.kubeconfig")
PENDING = 3


def _validity(text: str) -> Any:
    from controller.policy.agentidentity import MIN_VALIDITY

    value = options.positive_duration(text)
    if value < MIN_VALIDITY:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than Kubernetes' minimum of 10m")
    return value


def _say(message: str) -> None:
    print(message, flush=True)


def _enroll(args: argparse.Namespace) -> int:
    from kubernetes import config

    from controller.runtime import agentenrollment as enrollment
    from controller.runtime import fieldmanager

    try:
        loaded = config.new_client_from_config(config_file=str(args.kubeconfig))
    except config.ConfigException as error:
        print(f"ds01: --kubeconfig {args.kubeconfig}: {error}", file=sys.stderr)
        return 1
    admin = fieldmanager.name_writes(loaded, enrollment.FIELD_MANAGER)

    def submitted(name: str) -> None:
        if args.approve:
            _say(f"certificate request {name} submitted and approved")
        else:
            _say(
                f"certificate request {name} submitted; waiting up to {args.wait} for an admin "
                f"to check and approve it:\n  kubectl get csr {name}\n"
                f"  kubectl certificate approve {name}"
            )

    try:
        credentials = enrollment.enroll(
            admin,
            args.node,
            args.out,
            validity=args.validity,
            approve_it=args.approve,
            wait_s=args.wait.total_seconds(),
            submitted=submitted,
        )
    except enrollment.RequestPendingError as waiting:
        print(f"ds01: {waiting}", file=sys.stderr)
        return PENDING
    finally:
        admin.close()
    _say(
        f"wrote {args.out}: {credentials.user} (group {', '.join(credentials.groups)}), "
        f"valid until {credentials.not_after:%Y-%m-%d %H:%M:%S} UTC; "
        "`ds01 agent credentials` renews it (the ds01-agent-credentials.timer)"
    )
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from controller.runtime import agentenrollment as enrollment

    try:
        result = enrollment.renew(
            args.kubeconfig,
            validity=args.validity,
            wait_s=args.wait.total_seconds(),
            force=args.force,
            submitted=lambda name: _say(f"renewal request {name} submitted"),
        )
    except enrollment.RequestPendingError as waiting:
        print(
            f"ds01: {waiting}. The operator approves an agent's renewal by itself; if none "
            "runs, an admin must. The current certificate stays in use meanwhile.",
            file=sys.stderr,
        )
        return PENDING
    what = "renewed" if result.renewed else "nothing to do"
    _say(f"{args.kubeconfig}: {what}; the certificate is {result.renewal.describe()}")
    return 0


def register(agent: argparse.ArgumentParser) -> None:
    """`enroll` and `credentials` under `ds01 agent` (which runs the agent without one)."""
    commands = agent.add_subparsers(dest="agent_command", metavar="{enroll,credentials}")
    enroll = commands.add_parser(
        "enroll",
        help="give a Docker host's agent its certificate (a cluster admin, once per host)",
        description="Bind the node's agent identity (ds01-agent:node:NODE) to the agent "
        "roles, submit a certificate request for a key made here, and write the agent's "
        "kubeconfig once it is approved and issued.",
    )
    enroll.add_argument("--node", required=True, help="the node's name (its GPUNode's)")
    enroll.add_argument(
        "--kubeconfig",
        type=Path,
        required=True,
        help="a cluster admin's kubeconfig (only used for this command, never stored)",
    )
    enroll.add_argument("--out", type=Path, default=DEFAULT_KUBECONFIG, help="%(default)s")
    enroll.add_argument(
        "--approve",
        action="store_true",
        help="approve the request here (the admin running this is the approver)",
    )
    enroll.add_argument("--validity", type=_validity, default="720h", help="%(default)s")
    enroll.add_argument(
        "--wait", type=options.duration, default="15m", help="for approval; %(default)s"
    )
    enroll.set_defaults(run=_enroll)

    renew = commands.add_parser(
        "credentials",
        help="renew the agent's certificate when it is due (run by a systemd timer)",
        description="Renew the certificate in the agent's kubeconfig once 2/3 of its "
        "lifetime has passed, with a new key, asking with the current certificate.",
    )
    renew.add_argument("--kubeconfig", type=Path, default=DEFAULT_KUBECONFIG, help="%(default)s")
    renew.add_argument(
        "--force", action="store_true", help="renew now, however long the certificate has left"
    )
    renew.add_argument("--validity", type=_validity, default="720h", help="%(default)s")
    renew.add_argument(
        "--wait", type=options.duration, default="10m", help="for approval; %(default)s"
    )
    renew.set_defaults(run=_credentials)
