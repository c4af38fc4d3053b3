"""The `--leader-*` options of `ds01 operator` (docs/operator.md, "High availability")."""

from __future__ import annotations

import argparse
import re
from typing import Any

from controller.cli import options

_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def yes_no(text: str) -> bool:
    word = text.strip().lower()
    if word not in _TRUE + _FALSE:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return word in _TRUE


def lease(text: str) -> str:
    if not re.fullmatch(f"{_NAME}/{_NAME}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAMESPACE/NAME (lower-case names, e.g. ds01-system/ds01-operator)"
        )
    return text


def add(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("leader election (run two replicas; one writes)")
    group.add_argument(
        "--leader-election",
        type=yes_no,
        default="true",
        help="write only while holding the Lease; false only when exactly one operator runs",
    )
    group.add_argument(
        "--leader-lease",
        type=lease,
        default="ds01-system/ds01-operator",
        help="NAMESPACE/NAME of the coordination.k8s.io Lease the replicas share",
    )
    group.add_argument(
        "--leader-identity",
        help="this replica's name in the Lease, unique per replica (the pod's name); "
        "default: host name, process id and a random suffix",
    )
    group.add_argument(
        "--leader-lease-duration",
        type=options.positive_duration,
        default="15s",
        help="whole seconds a Lease not renewed is respected before another replica takes it",
    )
    group.add_argument(
        "--leader-renew-deadline",
        type=options.positive_duration,
        default="10s",
        help="the leader stops writing when it has not renewed for this long (shorter than "
        "the lease duration: the difference is the margin between two leaders' writes)",
    )
    group.add_argument(
        "--leader-retry-period",
        type=options.positive_duration,
        default="2s",
        help="between reads and renewals of the Lease",
    )


def settings(args: Any) -> dict[str, Any]:
    """OperatorOptions' leader fields, checked together; ValueError naming the flags."""
    from controller.policy.leadership import ElectionTimings  # checks them; raises ValueError

    ElectionTimings(
        args.leader_lease_duration, args.leader_renew_deadline, args.leader_retry_period
    )
    return {
        "leader_election": args.leader_election,
        "leader_lease": args.leader_lease,
        "leader_identity": args.leader_identity,
        "leader_lease_duration": args.leader_lease_duration,
        "leader_renew_deadline": args.leader_renew_deadline,
        "leader_retry_period": args.leader_retry_period,
    }
