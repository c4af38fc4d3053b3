"""Docker-host agents' certificates: names, the renewal clock, what the operator approves.

All pure: real certificate requests made with `cryptography`, a fake clock.
The same rules against the real apiserver and signer are in
tests/controlplane/test_agent_certificates.py.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from controller.cli.agentcreds import DEFAULT_KUBECONFIG
from controller.cli.main import build_parser
from controller.policy.agentidentity import (
    AGENT_GROUP,
    AGENT_USER_PREFIX,
    MAX_NODE_LENGTH,
    MAX_RENEWAL_VALIDITY,
    SigningRequest,
    agent_user,
    node_name_problem,
    node_of,
    parse_request,
    renewal,
    renewal_refusal,
)
from controller.runtime.agentcredentials import AgentCredentials, PendingRequest, new_request

ROOT = Path(__file__).resolve().parents[2]

label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
node_names = (
    st.lists(label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda n: len(n) <= MAX_NODE_LENGTH)
)


@given(node_names)
def test_every_gpunode_name_that_fits_a_common_name_is_an_agent_identity(node: str) -> None:
    assert node_name_problem(node) is None
    assert node_of(agent_user(node), [AGENT_GROUP, "system:authenticated"]) == node


@given(node_names)
def test_the_name_alone_does_not_make_an_agent_without_the_group(node: str) -> None:
    assert node_of(agent_user(node), ["system:authenticated"]) is None
    assert node_of(f"oidc:{agent_user(node)}", [AGENT_GROUP]) is None


@pytest.mark.parametrize(
    ("node", "named"),
    [
        ("", "a name is required"),
        ("GPU-01", "not a GPUNode name"),
        ("gpu_01", "not a GPUNode name"),
        ("gpu-01-", "not a GPUNode name"),
        ("a" * (MAX_NODE_LENGTH + 1), "at most 48"),
    ],
)
def test_bad_node_names_are_refused_naming_the_field(node: str, named: str) -> None:
    problem = node_name_problem(node)
    assert problem is not None and problem.startswith("node: ") and named in problem
    with pytest.raises(ValueError, match="node: "):
        agent_user(node)
    assert node_of(AGENT_USER_PREFIX + node, [AGENT_GROUP]) is None


# -- the renewal clock --------------------------------------------------------------------

START = datetime(2025, 3, 1, tzinfo=UTC)


def test_a_thirty_day_certificate_is_renewed_from_day_twenty() -> None:
    end = START + timedelta(days=30)
    assert renewal(START, end, START + timedelta(days=19, hours=23)).state == "valid"
    due = renewal(START, end, START + timedelta(days=20))
    assert due.state == "due" and due.renew_from == START + timedelta(days=20)
    assert renewal(START, end, end - timedelta(seconds=1)).state == "due"
    assert renewal(START, end, end).state == "expired"
    assert "expired at 2025-03-31" in renewal(START, end, end).describe()


@given(
    lifetime=st.integers(min_value=600, max_value=400 * 86400),
    elapsed=st.integers(min_value=-86400, max_value=500 * 86400),
    fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_the_renewal_state_follows_the_clock(lifetime: int, elapsed: int, fraction: float) -> None:
    end = START + timedelta(seconds=lifetime)
    now = START + timedelta(seconds=elapsed)
    standing = renewal(START, end, now, fraction)
    assert START <= standing.renew_from <= end
    assert (standing.state == "expired") == (now >= end)
    assert (standing.state == "due") == (standing.renew_from <= now < end)


def test_a_certificate_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="certificate: it ends"):
        renewal(START, START, START)
    with pytest.raises(ValueError, match="renew_at"):
        renewal(START, START + timedelta(days=1), START, 1.5)


# -- what the operator approves --------------------------------------------------------------


def csr_pem(
    subject: list[tuple[x509.ObjectIdentifier, str]],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    sans: list[str] | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def request(pem: bytes | None = None, **changes: object) -> SigningRequest:
    """node-a's agent renewing itself, as its certificate asked, unless ``changes`` say otherwise."""
    subject, extensions, key = parse_request(pem or new_request("node-a")[1])
    renewal_request = SigningRequest(
        name="ds01-agent-node-a-x1y2z",
        signer="kubernetes.io/kube-apiserver-client",
        requester=agent_user("node-a"),
        requester_groups=(AGENT_GROUP, "system:authenticated"),
        usages=("digital signature", "client auth"),
        expiration_seconds=30 * 86400,
        subject=subject,
        extensions=extensions,
        key=key,
        decided=False,
    )
    return dataclasses.replace(renewal_request, **changes)  # type: ignore[arg-type]


def test_an_agent_renewing_its_own_identity_is_approved() -> None:
    assert request().subject == (("O", AGENT_GROUP), ("CN", agent_user("node-a")))
    assert renewal_refusal(request()) is None
    assert renewal_refusal(request(expiration_seconds=600)) is None


CN, ORG, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME


@pytest.mark.parametrize(
    ("pem", "changes", "why"),
    [
        # Another identity than the requester's own.
        (
            csr_pem([(ORG, AGENT_GROUP), (CN, agent_user("node-b"))]),
            {},
            "not CN=ds01-agent:node:node-a",
        ),
        (csr_pem([(ORG, "ds01:admins"), (CN, agent_user("node-a"))]), {}, "is not CN="),
        (
            csr_pem([(ORG, AGENT_GROUP), (ORG, "system:masters"), (CN, agent_user("node-a"))]),
            {},
            "is not CN=",
        ),
        (csr_pem([(ORG, AGENT_GROUP), (OU, "x"), (CN, agent_user("node-a"))]), {}, "is not CN="),
        (csr_pem([(CN, agent_user("node-a"))]), {}, "is not CN="),
        (csr_pem([(ORG, AGENT_GROUP), (CN, "it.admin@lab.example")]), {}, "is not CN="),
        # Not asked for by an agent's certificate.
        (
            None,
            {"requester": "system:serviceaccount:ds01-system:ds01-agent"},
            "not by a Docker-host",
        ),
        (None, {"requester": "it.admin@lab.example"}, "not by a Docker-host"),
        (None, {"requester_groups": ("system:authenticated",)}, "not by a Docker-host"),
        # More than a client certificate, or for longer, or weaker.
        (
            csr_pem([(ORG, AGENT_GROUP), (CN, agent_user("node-a"))], sans=["evil"]),
            {},
            "extensions",
        ),
        (None, {"usages": ("client auth", "server auth")}, "usages"),
        (None, {"usages": ("digital signature",)}, "usages"),
        (None, {"expiration_seconds": None}, "expirationSeconds None"),
        (
            None,
            {"expiration_seconds": int(MAX_RENEWAL_VALIDITY.total_seconds()) + 1},
            "expirationSeconds",
        ),
        (None, {"expiration_seconds": 599}, "expirationSeconds"),
        (None, {"signer": "kubernetes.io/kube-apiserver-client-kubelet"}, "signer"),
        (
            csr_pem(
                [(ORG, AGENT_GROUP), (CN, agent_user("node-a"))],
                key=rsa.generate_private_key(65537, 1024),
            ),
            {},
            "key RSA 1024",
        ),
        (None, {"decided": True}, "already decided"),
    ],
)
def test_anything_but_a_renewal_of_ones_own_identity_is_left_to_an_admin(
    pem: bytes | None, changes: dict[str, object], why: str
) -> None:
    refusal = renewal_refusal(request(pem, **changes))
    assert refusal is not None and why in refusal


def test_a_request_that_is_not_a_certificate_request_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match=r"spec\.request: not a PEM certificate request"):
        parse_request(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )


def test_the_admission_parameters_are_the_policy_constants() -> None:
    """ds01-agent-own-node and ds01-agent-renewals read these; the operator and CLI use the constants."""
    docs = yaml.safe_load_all((ROOT / "manifests" / "core" / "admission.yaml").read_text())
    params = next(d for d in docs if d and d["metadata"]["name"] == "ds01-admission")["data"]
    assert params["agentCertificatePrefix"] == AGENT_USER_PREFIX
    assert params["agentGroup"] == AGENT_GROUP
    assert int(params["agentRenewalMaxSeconds"]) == MAX_RENEWAL_VALIDITY.total_seconds()


# -- credentials on disk -----------------------------------------------------------------------


def test_credentials_are_written_whole_and_private_and_read_back(tmp_path: Path) -> None:
    key_pem, _ = new_request("node-a")
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name(
        [x509.NameAttribute(ORG, AGENT_GROUP), x509.NameAttribute(CN, agent_user("node-a"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(START + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    written = AgentCredentials(
        "https://apiserver:6443", b"CA", cert.public_bytes(serialization.Encoding.PEM), key_pem
    )
    path = tmp_path / "etc" / "agent.kubeconfig"
    written.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["agent.kubeconfig"]  # no temporary left
    read = AgentCredentials.read(path)
    assert (
        read == written and read.node == "node-a" and read.not_after == START + timedelta(days=30)
    )

    PendingRequest("node-a", "ds01-agent-node-a-abcde", key_pem, START).save(path)
    assert PendingRequest.path_for(path).stat().st_mode & 0o777 == 0o600
    assert PendingRequest.load(path) == PendingRequest(
        "node-a", "ds01-agent-node-a-abcde", key_pem, START
    )
    PendingRequest.discard(path)
    assert PendingRequest.load(path) is None


def test_a_kubeconfig_without_a_certificate_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "token.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    with pytest.raises(ValueError, match="no inline client certificate and key"):
        AgentCredentials.read(path)
    with pytest.raises(ValueError, match="not a readable kubeconfig"):
        AgentCredentials.read(tmp_path / "missing")


# -- the install guide and the units ------------------------------------------------------------


def test_the_guides_commands_and_the_renewal_unit_are_commands_ds01_accepts() -> None:
    """docs/docker-host.md's `ds01 agent enroll|credentials` lines and the timer's service
    parse as written (tests/controlplane/test_agent_renewal.py runs them for real)."""
    guide = (ROOT / "docs" / "docker-host.md").read_text()
    lines = [
        line.split("ds01 ", 1)[1].split("#")[0]
        for line in guide.splitlines()
        if re.match(r"^(\.venv/bin/)?ds01 agent (enroll|credentials)\b", line)
    ]
    assert len(lines) >= 2
    for line in lines:
        args = build_parser().parse_args(shlex.split(line))
        assert args.agent_command == "enroll" and args.node == "gpu-server-1" and args.approve
        assert args.out == DEFAULT_KUBECONFIG
    service = (ROOT / "deploy" / "docker-host" / "ds01-agent-credentials.service").read_text()
    exec_start = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0].endswith("/ds01")
    args = build_parser().parse_args(argv[1:])
    assert args.agent_command == "credentials" and args.kubeconfig == DEFAULT_KUBECONFIG
    settings = (ROOT / "deploy" / "docker-host" / "ds01-agent.env").read_text()
    assert f"DS01_KUBECONFIG={DEFAULT_KUBECONFIG}" in settings.splitlines()
    timer = (ROOT / "deploy" / "docker-host" / "ds01-agent-credentials.timer").read_text()
    assert "Persistent=true" in timer and "OnCalendar=" in timer
