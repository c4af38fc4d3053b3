"""`kubectl ds01 request`: refuse locally what the published policy would refuse.

The user's effective limits are read back from their published policy
(`ds01-policy`: every limit with its source), and the operator's own
functions judge the request (`controller.policy.grants`), so the words are
the operator's words. What is not published (whether the account has a
Linux login, for Host access) is left to the operator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.api.account import Account
from controller.api.accountpolicy import AccountPolicy
from controller.api.kinds import GPUGrant
from controller.api.ratelimit import GPURateLimitSpec
from controller.policy.defaults import BUILT_IN
from controller.policy.effective import EffectiveLimits, overlay
from controller.policy.grants import (
    GrantContext,
    GrantSettings,
    approval_blockers,
    problems,
    rate_limited,
    request_rank,
    window,
)

_INDEXED = re.compile(r"^(?P<list>[A-Za-z]+)\[(?P<key>[^\]]+)\]$")


def limits_from(doc: AccountPolicy) -> EffectiveLimits:
    """The effective limits as published: values by spec path, each with its source."""
    tree: dict[str, Any] = {}
    for path, entry in doc.limits.items():
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            indexed = _INDEXED.match(part)
            if indexed:
                items = node.setdefault(indexed["list"], [])
                found = next((i for i in items if i.get("type") == indexed["key"]), None)
                if found is None:
                    found = {"type": indexed["key"]}
                    items.append(found)
                node = found
            else:
                node = node.setdefault(part, {})
        node[parts[-1]] = entry.value
    tree["subjects"] = [{"kind": "User", "name": doc.user}]
    published = GPURateLimitSpec.model_validate(tree)
    return EffectiveLimits(
        spec=overlay(BUILT_IN, published, skip=frozenset({"subjects"})),
        sources={path: entry.source for path, entry in doc.limits.items()},
        applied=tuple(doc.applied),
    )


@dataclass(frozen=True)
class Screening:
    """What the operator would make of the request."""

    refusal: str | None = None
    """The message of an Invalid or Denied decision; None when it would not refuse."""
    state: str | None = None
    """`Invalid` or `Denied` when refused."""
    waits_for: list[str] = field(default_factory=list)
    """Why it would wait for an approver (empty: approved by the operator)."""


def screen(
    grant: GPUGrant,
    doc: AccountPolicy,
    earlier: Sequence[GPUGrant],
    now: datetime,
    settings: GrantSettings | None = None,
) -> Screening:
    """Judge ``grant`` (not created yet, created ``now``) as the operator would."""
    limits = limits_from(doc)
    # The Linux login is not published; the operator checks Host access for it.
    login = "unknown" if grant.spec.access == "Host" else None
    account = Account(
        namespace=doc.namespace, user=doc.user, groups=tuple(doc.groups), linux_user=login
    )
    exempt = frozenset(x for e in doc.exemptions for x in e.exempt_from)
    placed = grant.model_copy(
        update={"metadata": grant.metadata.model_copy(update={"creation_timestamp": now})}
    )
    mine = [g for g in earlier if g.spec.subject.name == doc.user]
    rank = request_rank(placed, [*mine, placed])
    ctx = GrantContext(
        account=account, account_problem=None, limits=limits, exempt_from=exempt, request_rank=rank
    )
    found = problems(placed, ctx)
    if found:
        return Screening("; ".join(found), "Invalid")
    limited = rate_limited(placed, ctx)
    if limited:
        return Screening(limited, "Denied")
    span = window(placed, settings or GrantSettings())
    return Screening(waits_for=approval_blockers(placed, span, limits))
