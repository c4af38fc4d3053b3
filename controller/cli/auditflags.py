"""The `--audit-*` options both long-running binaries share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.cli import options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("audit trail")
    group.add_argument(
        "--audit-key",
        type=Path,
        help="root-only file with the key the trail's checkpoints are signed with "
        "(no key: the trail is chained but its checkpoints are not signed)",
    )
    group.add_argument(
        "--audit-retention",
        type=options.duration_or_unlimited,
        default="720h",
        help="how long rotated days of the trail are kept (Unlimited keeps them)",
    )
    group.add_argument(
        "--audit-stdout",
        action="store_true",
        help="also print each audit record to stdout (for the cluster's log collector)",
    )
    group.add_argument(
        "--audit-checkpoint-every",
        type=_positive_int,
        default=1000,
        help="sign a checkpoint after this many records",
    )
    group.add_argument(
        "--audit-checkpoint-interval",
        type=options.duration,
        default="5m",
        help="and at least this often while records come (0: only by count)",
    )


def settings(args: Any) -> Any:
    from controller.runtime.audittrail import AuditSettings

    return AuditSettings(
        key_file=args.audit_key,
        retention=args.audit_retention,
        stdout=args.audit_stdout,
        checkpoint_every=args.audit_checkpoint_every,
        checkpoint_interval=args.audit_checkpoint_interval,
    )
