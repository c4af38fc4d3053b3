"""ds01-pod-security's allow-lists, with an admin's entries, against generated spellings.

The admin allows host paths under `/data/shared` and `/var/lib` (the latter
holds protected paths: the runtime's and kubelet's state), the runtime class
`gvisor` and the inline CSI driver of a secrets store. Paths are spelled the
way a hostile client would (doubled slashes, `.` and `x/..` components,
trailing slashes) and judged by the real apiserver; the oracle is Python's own
path normalisation, not a copy of the policy's rules.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from controller.policy.accounts import AccountSettings, pod_security_labels
from tests.controlplane.escapes import DANGEROUS_CAPABILITIES, base_pod
from tests.controlplane.kube import Kube
from tests.controlplane.test_pod_escapes import VAP, account_namespace, bind, verdict

STUDENT = "escapee@lab.example"
ALLOWED = {
    "allowedHostPathPrefixes": "/data/shared, /var/lib",
    "allowedRuntimeClasses": "gvisor",
    "allowedInlineCSIDrivers": "secrets-store.csi.k8s.io",
}
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINUX_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
    "ALL",
)


@dataclass(frozen=True)
class Lists:
    student: Kube
    relaxed: str
    """An account whose Pod Security level an admin set to privileged."""
    guarded: str
    """An account at the operator's default level (baseline)."""
    params: dict[str, str]
    """ds01-admission's data while the admin's entries are in force."""

    def items(self, key: str) -> list[str]:
        return [p.strip() for p in self.params.get(key, "").split(",") if p.strip()]


def host_path_pod(path: str) -> dict[str, Any]:
    body = base_pod("data-reader")
    body["spec"]["volumes"].append({"name": "data", "hostPath": {"path": path}})
    return body


def set_params(admin: Kube, data: dict[str, str | None]) -> None:
    admin.core.patch_namespaced_config_map("ds01-admission", "ds01-system", {"data": data})


@pytest.fixture(scope="module")
def lists(cluster: LocalCluster, admin: Kube, as_user) -> Iterator[Lists]:  # type: ignore[no-untyped-def]
    relaxed = account_namespace(
        admin,
        "u-spelling",
        pod_security_labels({"gpu.ds01.io/pod-security": "privileged"}, AccountSettings()),
    )
    guarded = account_namespace(
        admin, "u-spelling-guarded", pod_security_labels({}, AccountSettings())
    )
    for namespace in (relaxed, guarded):
        bind(admin, namespace, "ds01-user")
    student: Kube = as_user(STUDENT, "student")
    before = admin.core.read_namespaced_config_map("ds01-admission", "ds01-system").data
    set_params(admin, dict(ALLOWED))
    # Policies read their parameters through the apiserver's watch cache: wait for it.
    wait_until(
        lambda: verdict(student, relaxed, host_path_pod("/data/shared"))[0] == 0,
        30,
        "the admin's allowed host path prefix to be in force",
        0.2,
    )
    params = admin.core.read_namespaced_config_map("ds01-admission", "ds01-system").data
    yield Lists(student, relaxed, guarded, params)
    set_params(admin, {k: before.get(k) for k in ALLOWED})
    wait_until(
        lambda: verdict(student, relaxed, host_path_pod("/data/shared"))[0] == 403,
        30,
        "the default (no host paths) to be back in force",
        0.2,
    )


def parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def clean(path: str) -> str:
    """What the node's kernel resolves an absolute path to (symlinks aside)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def plainly_written(path: str) -> bool:
    return path.startswith("/") and not path.startswith("//") and posixpath.normpath(path) == path


def related(path: str, protected: str) -> bool:
    """At, under or above: one path's components begin the other's."""
    a, b = parts(path), parts(protected)
    return a[: len(b)] == b or b[: len(a)] == a


def under(path: str, prefix: str) -> bool:
    return parts(path)[: len(parts(prefix))] == parts(prefix)


JUNK = st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True)


@st.composite
def spelled(draw: st.DrawFn, target: str) -> str:
    """``target`` written plainly, or with random separators a one-pass clean-up misses."""
    if draw(st.booleans()):
        return target
    out = draw(st.sampled_from(["", "", "", "/.", "//"]))
    for part in parts(target) or [""]:
        separator = draw(st.sampled_from(["/", "/", "/", "//", "///", "/./", "/././"]))
        if draw(st.booleans()) and draw(st.booleans()):
            separator = f"/{draw(JUNK)}/..{separator}"
        out += separator + part
    out += draw(st.sampled_from(["", "", "", "/", "/.", "//", f"/{draw(JUNK)}/.."]))
    return out


def protected_targets(lists: Lists) -> st.SearchStrategy[str]:
    protected = lists.items("protectedHostPaths")
    inside = st.tuples(st.sampled_from(protected), JUNK).map(lambda t: f"{t[0]}/{t[1]}")
    parents = st.sampled_from(sorted({posixpath.dirname(p) for p in protected}))
    return st.one_of(st.sampled_from(protected), inside, parents)


def check_refused(lists: Lists, path: str) -> None:
    status, message = verdict(lists.student, lists.relaxed, host_path_pod(path))
    assert status != 0, f"hostPath {path!r} (cleans to {clean(path)}) was admitted"
    if status == 403:
        assert VAP in message and "spec.volumes[name=data].hostPath.path" in message, message


def test_hostpath_spellings_that_clean_to_a_protected_path_are_refused(lists: Lists) -> None:
    @EXAMPLES
    @given(st.data())
    def check(data: st.DataObject) -> None:
        target = data.draw(protected_targets(lists))
        path = data.draw(spelled(target))
        assert any(related(clean(path), p) for p in lists.items("protectedHostPaths"))
        check_refused(lists, path)

    check()


def test_a_hostpath_is_admitted_only_when_written_plainly_under_an_allowed_prefix(
    lists: Lists,
) -> None:
    targets = st.one_of(
        st.sampled_from(["/data/shared", "/data", "/data/sharedx", "/data/other", "/var/lib"]),
        st.tuples(
            st.sampled_from(["/data/shared", "/data/shared/sets", "/var/lib", "/tmp", "/home"]),
            JUNK,
        ).map(lambda t: f"{t[0]}/{t[1]}"),
    )

    outcomes: set[bool] = set()

    @EXAMPLES
    @given(st.data())
    def check(data: st.DataObject) -> None:
        path = data.draw(spelled(data.draw(targets)))
        expected = (
            plainly_written(path)
            and any(under(path, p) for p in lists.items("allowedHostPathPrefixes"))
            and not any(related(path, p) for p in lists.items("protectedHostPaths"))
        )
        status, message = verdict(lists.student, lists.relaxed, host_path_pod(path))
        assert (status == 0) == expected, f"hostPath {path!r}: {status} {message}"
        outcomes.add(expected)

    check()
    assert outcomes == {True, False}, "the examples never tested one of the two verdicts"


def test_an_allowed_host_path_still_needs_an_admin_to_relax_pod_security_for_the_account(
    lists: Lists,
) -> None:
    body = host_path_pod("/data/shared/imagenet")
    assert verdict(lists.student, lists.relaxed, body)[0] == 0
    status, message = verdict(lists.student, lists.guarded, body)
    assert status == 403 and 'violates PodSecurity "baseline:latest"' in message, message


def test_capabilities_outside_the_allow_list_are_refused_in_any_spelling(lists: Lists) -> None:
    allowed = set(lists.items("allowedCapabilities"))
    assert not allowed & set(DANGEROUS_CAPABILITIES), "the default list grants an escape"

    @EXAMPLES
    @given(
        st.sampled_from(LINUX_CAPABILITIES),
        st.sampled_from(["", "CAP_", "cap_"]),
        st.sampled_from([str.upper, str.lower, str.title]),
    )
    def check(name: str, prefix: str, case: Any) -> None:
        spelling = prefix + case(name)
        body = base_pod("caps")
        body["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": [spelling]}}
        status, message = verdict(lists.student, lists.relaxed, body)
        if spelling in allowed:
            assert status == 0, message
        else:
            assert status == 403 and VAP in message, f"{spelling}: {status} {message}"
            assert f"capabilities.add: {spelling}" in message

    check()


@pytest.mark.parametrize(
    ("volume", "admitted"),
    [
        ({"csi": {"driver": "secrets-store.csi.k8s.io"}}, True),
        ({"csi": {"driver": "nfs.csi.k8s.io"}}, False),
        ({"nfs": {"server": "files.lab.example", "path": "/srv"}}, False),
    ],
    ids=["listed-csi-driver", "unlisted-csi-driver", "nfs"],
)
def test_inline_volumes_are_admitted_only_from_the_admins_driver_list(
    lists: Lists, volume: dict[str, Any], admitted: bool
) -> None:
    body = base_pod("inline")
    body["spec"]["volumes"].append({"name": "inline", **volume})
    status, message = verdict(lists.student, lists.relaxed, body)
    assert (status == 0) == admitted, message


@pytest.mark.parametrize(("runtime", "admitted"), [("gvisor", True), ("kata", False)])
def test_runtime_classes_are_admitted_only_from_the_admins_list(
    lists: Lists, admin: Kube, runtime: str, admitted: bool
) -> None:
    for name in ("gvisor", "kata"):
        admin.apply(
            json.dumps(
                {
                    "apiVersion": "node.k8s.io/v1",
                    "kind": "RuntimeClass",
                    "metadata": {"name": name},
                    "handler": name,
                }
            )
        )
    body = base_pod("sandboxed")
    body["spec"]["runtimeClassName"] = runtime
    status, message = verdict(lists.student, lists.relaxed, body)
    assert (status == 0) == admitted, message
    if not admitted:
        assert "spec.runtimeClassName: kata is not allowed in user accounts (allowed: gvisor)" in (
            message
        )
