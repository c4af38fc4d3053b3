"""User accounts: namespaces labelled and annotated by admins.

Kubernetes keeps no record of group membership, so the account namespace does:
its label names the user (sanitised, since label values cannot hold ``@``), its
annotations hold the exact user name, the user's groups and their Linux login
on the nodes. Group membership comes from here and nowhere else, and workload
ownership on Kubernetes comes from the namespace, never from labels a user can
write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import ValidationError

from controller.api.base import GROUP, Model
from controller.api.values import LinuxUser, PrincipalName

LABEL_USER = f"{GROUP}/user"
"""On an account namespace: the sanitised user name (a label value)."""
ANNOTATION_USER = f"{GROUP}/user-name"
"""The exact user name as the apiserver authenticates it, e.g. ``248835@lab.example``."""
ANNOTATION_GROUPS = f"{GROUP}/groups"
"""Comma-separated groups, e.g. ``student`` or ``researcher,approver``."""
ANNOTATION_LINUX_USER = f"{GROUP}/linux-user"
"""The user's Linux login on GPU nodes, for host access and the Docker gateway."""
ANNOTATION_POD_SECURITY = f"{GROUP}/pod-security"
"""Set by an admin: the Pod Security Admission level enforced in this account
(``privileged``, ``baseline`` or ``restricted``) instead of the operator's default."""

MAX_GROUPS = 32
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")


def label_value(user: str) -> str:
    """The label value for a user name: ``248835@lab.example`` -> ``248835-lab.example``.

    Characters a label value cannot hold become ``-``; the result is cut to 63
    characters and trimmed to start and end alphanumerically. Distinct user
    names can collide here, which is why the exact name is kept in an annotation
    and checked against the label.
    """
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", user)[:63]
    return value.strip("-_.")


class Account(Model):
    """One user's account as read from their namespace."""

    namespace: str
    """The account namespace."""
    user: PrincipalName
    """The exact user name."""
    groups: tuple[PrincipalName, ...] = ()
    """The user's groups, in the order the annotation lists them."""
    linux_user: LinuxUser | None = None
    """The Linux login on GPU nodes, when the user has one."""


class AccountError(ValueError):
    """A namespace that claims to be an account but cannot be read as one."""


def parse_account(
    namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> Account | None:
    """Read an account from a namespace's labels and annotations.

    Returns None for a namespace without the account label. Raises AccountError,
    naming the label or annotation at fault, for one that is labelled but wrong.
    """
    label = labels.get(LABEL_USER)
    if label is None:
        return None
    user = annotations.get(ANNOTATION_USER, label)
    if not _LABEL_VALUE.match(label):
        raise AccountError(f"label {LABEL_USER}: {label!r} is not a valid label value")
    if label_value(user) != label:
        raise AccountError(
            f"annotation {ANNOTATION_USER}: {user!r} does not match label {LABEL_USER}={label!r}"
            f" (expected {label_value(user)!r})"
        )
    raw_groups = [g.strip() for g in annotations.get(ANNOTATION_GROUPS, "").split(",")]
    groups = tuple(dict.fromkeys(g for g in raw_groups if g))
    if len(groups) > MAX_GROUPS:
        raise AccountError(f"annotation {ANNOTATION_GROUPS}: more than {MAX_GROUPS} groups")
    try:
        return Account(
            namespace=namespace,
            user=user,
            groups=groups,
            linux_user=annotations.get(ANNOTATION_LINUX_USER) or None,
        )
    except ValidationError as error:
        field = {"user": ANNOTATION_USER, "groups": ANNOTATION_GROUPS}
        where = str(error.errors()[0]["loc"][0])
        raise AccountError(
            f"annotation {field.get(where, ANNOTATION_LINUX_USER)}: {error.errors()[0]['msg']}"
        ) from None
