"""The oldest Kubernetes ds01-controller runs on, and the check the operator makes at start.

The admission rules need MutatingAdmissionPolicy v1 (GA in 1.36): without it
the identity stamps (`requestedBy`, `approvedBy`, `revokedBy`) would be whatever
a client wrote. On an older cluster `kubectl apply -k manifests/...` already
fails at that object ("no matches for kind MutatingAdmissionPolicy in version
admissionregistration.k8s.io/v1"); an operator deployed some other way refuses
to start with this message instead of running unprotected.
"""

from __future__ import annotations

import re

from kubernetes import client

MINIMUM = (1, 36)
REASON = "MutatingAdmissionPolicy v1 (admissionregistration.k8s.io/v1), GA in 1.36"


def parse(version: str) -> tuple[int, int] | None:
    """(major, minor) of a server's gitVersion (`v1.36.3`, `v1.35.0-eks-1`, `v1.36.1+k3s1`)."""
    match = re.match(r"^v?(\d+)\.(\d+)", version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def refusal(version: str) -> str | None:
    """Why ds01-controller cannot run on a server of ``version``; None when it can."""
    found = parse(version)
    if found is None:
        return None  # an unreadable version is not a reason to refuse; the apply would fail
    if found < MINIMUM:
        need = ".".join(map(str, MINIMUM))
        return (
            f"ds01-controller needs Kubernetes >= {need} for {REASON};"
            f" this cluster is {version.strip()}: upgrade it first (README, Install)"
        )
    return None


def check(api: client.ApiClient) -> str | None:
    """Ask the apiserver its version; the refusal, if any."""
    info = client.VersionApi(api).get_code()
    return refusal(str(info.git_version))
