"""`kubectl ds01` (also `ds01`): the command line for users, approvers and admins.

Thin by design: `session` is the only module that talks to the apiserver;
what to show and say is decided by pure functions (`views`, `table`,
`auditview`, and in the policy layer `explain`, `requestcheck`,
`usagereport`, `ds01import`), tested on their own.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.ds01 import admin, approver, completion, student


def register(commands: Any, root: argparse.ArgumentParser) -> None:
    """Add every `kubectl ds01` command to the `ds01` parser."""
    student.register(commands)
    approver.register(commands)
    admin.register(commands)
    completion.register(commands, root)
