"""Self-approval by name games: one person under several user names is still one person.

An authenticator that prefixes user names (OIDC's `--oidc-username-prefix=oidc:`)
or an identity provider that ignores letter case hands the same person a second
Kubernetes user name. Admission compares identities canonically (case folded,
the longest configured prefix dropped; `usernamePrefixes` and
`caseInsensitiveUsernames` in ds01-admission). Every approver here holds a real
client certificate whose CN carries the spelling under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from tests.controlplane.kube import GROUP, VERSION, Kube

ADA = "ada@lab.example"
BEA = "oidc:bea@lab.example"  # an account created for an OIDC identity
APPROVERS = "ds01:approvers"
SELF = "nobody decides their own GPUGrant or one in their own account"
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Names:
    make: Any
    """as_user: (user, *groups) -> Kube with a fresh client certificate."""
    ada: str
    bea: str


def grant(namespace: str, name: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GPUGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "subject": {"kind": "User", "name": subject},
            "gpus": {"count": 1},
            "duration": "1h",
            "reason": "name games",
        },
    }


def account(admin: Kube, namespace: str, user: str, *also: str) -> str:
    """An account for ``user``; ds01-user bound to ``user`` and the other names in ``also``."""
    admin.namespace(
        namespace,
        {"gpu.ds01.io/user": user.replace("@", "-").replace(":", "-")},
        {"gpu.ds01.io/user-name": user, "gpu.ds01.io/groups": "researcher"},
    )
    admin.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "ds01-account-owner", "namespace": namespace},
            "subjects": [
                {"kind": "User", "name": n, "apiGroup": "rbac.authorization.k8s.io"}
                for n in (user, *also)
            ],
            "roleRef": {
                "kind": "ClusterRole",
                "name": "ds01-user",
                "apiGroup": "rbac.authorization.k8s.io",
            },
        }
    )
    return namespace


@pytest.fixture(scope="module")
def names(cluster: LocalCluster, admin: Kube, as_user) -> Names:  # type: ignore[no-untyped-def]
    ada = account(admin, "u-ada-names", ADA, f"oidc:{ADA}", "oidc:eve@lab.example")
    bea = account(admin, "u-bea-names", BEA)
    # Admins are approvers: they may create a grant for the account's owner.
    admin.create(grant(ada, "own", ADA))
    admin.create(grant(bea, "own", BEA))
    return Names(as_user, ada, bea)


def decide(kube: Kube, namespace: str, name: str = "own") -> tuple[int, str]:
    """Approve ``namespace/name`` as ``kube`` (server-side dry run): (0, "") or the refusal."""
    try:
        kube.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "gpugrants",
            name,
            {"spec": {"approval": {"decision": "Approved", "note": "looks fine"}}},
            dry_run="All",
        )
    except ApiException as error:
        return error.status, str(json.loads(error.body).get("message", error.body))
    return 0, ""


def spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` with random letter case, behind a prefix spelled in random case or none."""
    local = st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )
    prefix = st.sampled_from(["", "oidc:", "OIDC:", "Oidc:"])
    return st.tuples(prefix, local).map("".join)


def test_an_approver_cannot_approve_their_own_grant_under_a_prefixed_or_recased_name(
    names: Names,
) -> None:
    @EXAMPLES
    @given(spellings(ADA))
    def check(approver: str) -> None:
        status, message = decide(names.make(approver, APPROVERS), names.ada)
        assert status == 403 and SELF in message, f"{approver}: {status} {message}"

    check()


def test_an_oidc_accounts_owner_cannot_approve_under_their_certificate_name(
    names: Names,
) -> None:
    @EXAMPLES
    @given(spellings("bea@lab.example"))
    def check(approver: str) -> None:
        status, message = decide(names.make(approver, APPROVERS), names.bea)
        assert status == 403 and SELF in message, f"{approver}: {status} {message}"

    check()


@pytest.mark.parametrize(
    "approver", ["prof.cho@lab.example", "oidc:prof.cho@lab.example", "ada@lab.example.org"]
)
def test_another_person_may_approve(names: Names, approver: str) -> None:
    status, message = decide(names.make(approver, APPROVERS), names.ada)
    assert status == 0, message


def test_an_approver_cannot_approve_a_grant_in_an_account_handed_over_to_them(
    names: Names, admin: Kube
) -> None:
    """The subject is fixed at creation (the CRD) and was the owner then; an admin may
    later hand the namespace to someone else, who must not decide what is in it."""
    namespace = admin.namespace("u-handed-over")
    admin.create(grant(namespace, "inherited", "zed@lab.example"))
    admin.kubectl("annotate", "namespace", namespace, f"gpu.ds01.io/user-name={ADA}")
    status, message = decide(names.make(f"OIDC:{ADA.upper()}", APPROVERS), namespace, "inherited")
    assert status == 403 and SELF in message and f"account owner {ADA}" in message, message
    status, message = decide(names.make("prof.cho@lab.example", APPROVERS), namespace, "inherited")
    assert status == 0, message


@pytest.mark.parametrize(
    ("requester", "admitted"),
    [(f"oidc:{ADA}", True), (ADA.upper(), True), ("oidc:eve@lab.example", False)],
)
def test_a_user_requests_grants_for_themself_under_any_of_their_names_only(
    names: Names, requester: str, admitted: bool
) -> None:
    """RBAC binds the names an admin chose; admission then matches the person, not the string."""
    kube: Kube = names.make(requester)
    body = grant(names.ada, "mine", ADA)
    result = kube.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(body), check=False
    )
    if requester == ADA.upper():  # not bound by RBAC: the name is a different Kubernetes user
        assert result.returncode != 0 and "cannot create resource" in result.stderr
        return
    assert (result.returncode == 0) == admitted, result.stderr
    if not admitted:
        assert "you may request a GPUGrant only for yourself" in result.stderr


@pytest.fixture
def case_sensitive(admin: Kube, names: Names) -> Iterator[None]:
    """An identity provider where case makes distinct people: the admin says so."""

    def set_to(value: str) -> None:
        admin.core.patch_namespaced_config_map(
            "ds01-admission", "ds01-system", {"data": {"caseInsensitiveUsernames": value}}
        )

    recased = names.make(ADA.upper(), APPROVERS)
    set_to("false")
    wait_until(lambda: decide(recased, names.ada)[0] == 0, 30, "case-sensitive names", 0.2)
    yield
    set_to("true")
    wait_until(lambda: decide(recased, names.ada)[0] == 403, 30, "case-folded names", 0.2)


def test_with_case_sensitive_names_only_the_prefix_is_dropped(
    names: Names, case_sensitive: None
) -> None:
    status, message = decide(names.make(f"oidc:{ADA}", APPROVERS), names.ada)
    assert status == 403 and SELF in message, message
    status, message = decide(names.make(f"oidc:{ADA.title()}", APPROVERS), names.ada)
    assert status == 0, message
