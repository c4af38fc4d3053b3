"""A hostile client on the gateway socket: raw HTTP, odd spellings, generated variants.

Each test names a class of attack and proves it with variants against the
real engine behind the gateway: dockerd reads JSON keys case-insensitively
and merges repeated ones, routes on the decoded path, takes any `v[0-9.]+`
version, and ends HTTP lines at a bare LF. Whatever the spelling, a request
from a user either reaches the engine in the gateway's own canonical form,
judged, or is refused (4xx, audit record) with nothing created.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.gatewayhost import AMY, IMAGE, GatewayHost
from tests.agent.rawhttp import Answer, Connection, obj, request
from tests.unit.test_docker_gojson import spelling

HYPOTHESIS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ESCAPES: list[tuple[str, Any]] = [
    ("Privileged", True),
    ("Binds", ["/:/host"]),
    ("CapAdd", ["SYS_ADMIN"]),
    ("PidMode", "host"),
    ("CgroupParent", "/escape"),
    ("SecurityOpt", ["seccomp=unconfined"]),
    ("DeviceCgroupRules", ["c *:* rwm"]),
]


class Raw:
    """Raw connections as Amy (one process connects them all; fresh ones on demand)."""

    def __init__(self, host: GatewayHost) -> None:
        self.host = host
        self.pool: list[Any] = []

    def connection(self) -> Connection:
        if not self.pool:
            self.pool = self.host.connect(AMY, 40)
        return Connection(self.pool.pop())

    def ask(self, data: bytes, method: str = "POST") -> Answer:
        connection = self.connection()
        with connection.sock:
            connection.send(data)
            return connection.answer(method)


@pytest.fixture
def raw(gateway: GatewayHost) -> Iterator[Raw]:
    yield Raw(gateway)


def _refused_and_nothing_created(host: GatewayHost, before: set[str], answer: Answer) -> None:
    assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
    assert host.containers() == before


def _create(body: bytes, target: str = "/v1.41/containers/create") -> bytes:
    return request("POST", target, body)


def test_the_raw_client_can_create_when_nothing_escapes(gateway: GatewayHost, raw: Raw) -> None:
    """The control: the same raw requests do create a container when the body is benign."""
    answer = raw.ask(
        _create(obj(("Image", IMAGE), ("Cmd", ["true"]), ("HostConfig", {"NetworkMode": "none"})))
    )
    assert answer.status == 201, answer.body
    info = gateway.inspect(json.loads(answer.body)["Id"])
    assert info["HostConfig"]["Privileged"] is False


@HYPOTHESIS
@given(
    escape=st.sampled_from(ESCAPES),
    form=st.sampled_from(["nested", "duplicate-outer", "top-level", "duplicate-field"]),
    data=st.data(),
)
def test_json_key_spellings_never_smuggle_host_options(
    gateway: GatewayHost, raw: Raw, escape: tuple[str, Any], form: str, data: st.DataObject
) -> None:
    """Case, long-s and Kelvin spellings, repeated keys, top-level host options: all refused."""
    field, value = escape
    key = data.draw(spelling(field))
    outer = data.draw(spelling("HostConfig"))
    benign = {"NetworkMode": "none"}
    if form == "nested":
        body = obj(
            ("Image", IMAGE), ("Cmd", ["true"]), (outer, obj(("NetworkMode", "none"), (key, value)))
        )
    elif form == "duplicate-outer":
        body = obj(
            ("Image", IMAGE), ("Cmd", ["true"]), ("HostConfig", benign), (outer, obj((key, value)))
        )
    elif form == "top-level":
        body = obj(("Image", IMAGE), ("Cmd", ["true"]), ("HostConfig", benign), (key, value))
    else:
        body = obj(
            ("Image", IMAGE),
            ("HostConfig", obj(("NetworkMode", "none"), (field, None), (key, value))),
        )
    before = gateway.containers()
    _refused_and_nothing_created(gateway, before, raw.ask(_create(body)))


@HYPOTHESIS
@given(data=st.data())
def test_mount_spellings_never_bind_the_host_root(
    gateway: GatewayHost, raw: Raw, data: st.DataObject
) -> None:
    mount = obj(
        (data.draw(spelling("Type")), "bind"),
        (data.draw(spelling("Source")), "/"),
        (data.draw(spelling("Target")), "/host"),
    )
    body = obj(
        ("Image", IMAGE),
        ("HostConfig", obj(("NetworkMode", "none"), (data.draw(spelling("Mounts")), [mount]))),
    )
    before = gateway.containers()
    _refused_and_nothing_created(gateway, before, raw.ask(_create(body)))


def _path_variant(data: st.DataObject) -> str:
    version = data.draw(st.sampled_from(["/v1.41", "/v1.41.0", "/v01.41", "/v1..41", "", "/v1"]))
    path = "containers/create"
    chars = []
    for char in path:
        choice = data.draw(st.integers(0, 4))
        if choice == 1:
            chars.append(f"%{ord(char):02X}")
        elif choice == 2 and char == "/":
            chars.append(data.draw(st.sampled_from(["//", "/./", "/x/../", "%2F", "%2f"])))
        else:
            chars.append(char)
    prefix = data.draw(st.sampled_from(["", "", "http://docker", "//docker"]))
    suffix = data.draw(st.sampled_from(["", "/", "?name=a&name=b", ";x", "#f"]))
    return prefix + version + "/" + "".join(chars) + suffix


@HYPOTHESIS
@given(data=st.data())
def test_path_spellings_never_reach_the_engine_unjudged(
    gateway: GatewayHost, raw: Raw, data: st.DataObject
) -> None:
    """Versions as dockerd's router takes them, escapes, dot segments, absolute forms."""
    target = _path_variant(data)
    body = obj(
        ("Image", IMAGE),
        ("Cmd", ["true"]),
        ("HostConfig", {"NetworkMode": "none", "Privileged": True}),
    )
    before = gateway.containers()
    _refused_and_nothing_created(gateway, before, raw.ask(_create(body, target)))


PRIVILEGED = obj(
    ("Image", IMAGE), ("Cmd", ["true"]), ("HostConfig", {"NetworkMode": "none", "Privileged": True})
)
SMUGGLED = request("POST", "/v1.41/containers/create?name=smuggled", PRIVILEGED, eol=b"\n")

FRAMINGS: list[tuple[str, bytes]] = [
    (
        "bare-lf-second-request",
        request("GET", "/_ping", eol=b"\n")[:-1] + SMUGGLED + b"GET /_ping HTTP/1.1\r\n\r\n",
    ),
    (
        "bare-lf-headers",
        request("POST", "/v1.41/containers/create", PRIVILEGED, eol=b"\n") + b"\r\n\r\n",
    ),
    (
        "bare-cr",
        b"GET /_ping HTTP/1.1\rHost: docker\r\n\r\n",
    ),
    (
        "length-and-chunked",
        request(
            "POST",
            "/v1.41/containers/create",
            b"0\r\n\r\n" + SMUGGLED,
            [("Content-Length", str(5 + len(SMUGGLED))), ("Transfer-Encoding", "chunked")],
        ),
    ),
    (
        "two-lengths",
        request(
            "POST",
            "/v1.41/containers/create",
            PRIVILEGED,
            [("Content-Length", "0"), ("Content-Length", str(len(PRIVILEGED)))],
        ),
    ),
    (
        "odd-transfer-encoding",
        request("POST", "/v1.41/containers/create", b"", [("Transfer-Encoding", "xchunked")]),
    ),
    (
        "chunked-then-identity",
        request(
            "POST", "/v1.41/containers/create", b"", [("Transfer-Encoding", "chunked, identity")]
        ),
    ),
    ("folded-header", b"GET /_ping HTTP/1.1\r\nHost: docker\r\n X-Fold: 1\r\n\r\n"),
    ("space-before-colon", b"GET /_ping HTTP/1.1\r\nContent-Length : 0\r\n\r\n"),
    ("two-spaces", b"GET  /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"),
    ("http-2", b"GET /_ping HTTP/2.0\r\nHost: docker\r\n\r\n"),
    ("lower-method", b"get /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"),
    ("options-method", b"OPTIONS /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"),
    (
        "chunk-extension",
        request("POST", "/v1.41/volumes/create", b"", [("Transfer-Encoding", "chunked")])
        + b"2;x=1\r\n{}\r\n0\r\n\r\n",
    ),
    (
        "chunk-bare-lf",
        request("POST", "/v1.41/volumes/create", b"", [("Transfer-Encoding", "chunked")])
        + b"2\n{}\r\n0\r\n\r\n",
    ),
    (
        "chunk-trailer",
        request("POST", "/v1.41/volumes/create", b"", [("Transfer-Encoding", "chunked")])
        + b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n",
    ),
    (
        "form-body",
        request(
            "POST",
            "/v1.41/build",
            b"networkmode=host",
            [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "16")],
        ),
    ),
    ("body-where-none-belongs", request("POST", "/v1.41/containers/x/kill", b"{}")),
]


@pytest.mark.parametrize(("name", "data"), FRAMINGS, ids=[f[0] for f in FRAMINGS])
def test_http_framing_that_two_parsers_could_read_apart_is_refused(
    gateway: GatewayHost, raw: Raw, name: str, data: bytes
) -> None:
    before = gateway.containers()
    answer = raw.ask(data)
    _refused_and_nothing_created(gateway, before, answer)
    assert not gateway.exists("smuggled")
    assert answer.status == 400, (name, answer.status, answer.message)


def test_pipelined_requests_are_each_judged(gateway: GatewayHost, raw: Raw) -> None:
    """Two requests in one packet: the benign one answered, the escaping one refused."""
    connection = raw.connection()
    before = gateway.containers()
    with connection.sock:
        connection.send(request("GET", "/v1.41/_ping") + _create(PRIVILEGED))
        first = connection.answer("GET")
        second = connection.answer()
    assert first.status == 200 and first.body == b"OK"
    assert second.status == 403 and "--privileged" in second.message
    assert gateway.containers() == before


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/v1.41/plugins/pull?remote=x", 403),
        ("POST", "/v1.41/swarm/init", 403),
        ("POST", "/grpc", 403),
        ("GET", "/v1.41/secrets", 403),
        ("POST", "/v1.41/build/prune", 403),
        ("POST", "/v1.41/containers/x/copy", 403),
        ("PUT", "/v1.41/volumes/x", 405),
        ("GET", "/v1.41/containers/create", 405),
        ("POST", "/v1.41/containers/create?HostConfig.Privileged=true", 400),
        ("POST", "/v1.41/build?networkmode=bridge&networkmode=host", 400),
        ("POST", "/v1.41/build?networkmode=host", 403),
        ("POST", "/v1.41/build?remote=https://example.org/x.git", 403),
        ("POST", "/v1.41/images/create?fromSrc=http://10.0.0.1/root.tar", 403),
        ("POST", "/v1.24/containers/x/start", 400),
    ],
)
def test_requests_off_the_allow_list_are_refused(
    gateway: GatewayHost, raw: Raw, method: str, target: str, status: int
) -> None:
    before = gateway.containers()
    answer = raw.ask(request(method, target, b"" if method in ("POST", "PUT") else None), method)
    assert answer.status == status, (answer.status, answer.message)
    assert gateway.containers() == before
    records = [r for r in gateway.audit_records() if r["details"].get("message") == answer.message]
    assert len(records) == 1, gateway.audit_records()[-3:]


def _container(gateway: GatewayHost, *extra: str) -> str:
    return gateway.ok(AMY, "run", "-d", "--network", "none", *extra, IMAGE, "sleep", "600")


@pytest.fixture
def mounting(gateway: GatewayHost) -> str:
    """Amy's running container that bind-mounts her home (once per test, for every example)."""
    return _container(gateway, "-v", f"{gateway.home(AMY)}:/home")


@HYPOTHESIS
@given(data=st.data())
def test_exec_spellings_never_run_privileged_or_as_root_over_host_paths(
    gateway: GatewayHost, raw: Raw, mounting: str, data: st.DataObject
) -> None:
    target = mounting
    field, value = data.draw(
        st.sampled_from([("Privileged", True), ("User", "0"), ("User", "root"), ("User", "1:0")])
    )
    body = obj((data.draw(spelling(field)), value), ("Cmd", ["id"]))
    answer = raw.ask(request("POST", f"/v1.41/containers/{target}/exec", body))
    assert answer.status in (400, 403), (answer.status, answer.message)


@HYPOTHESIS
@given(data=st.data())
def test_volume_and_network_spellings_never_reach_the_host(
    gateway: GatewayHost, raw: Raw, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["volume", "network"]))
    if kind == "volume":
        options = obj(("type", "none"), ("o", "bind"), ("device", "/"))
        body = obj(("Name", "escape"), (data.draw(spelling("DriverOpts")), options))
    else:
        field, value = data.draw(
            st.sampled_from(
                [
                    ("Driver", "host"),
                    ("Driver", "macvlan"),
                    ("Options", {"com.docker.network.bridge.name": "docker0"}),
                ]
            )
        )
        body = obj(("Name", "escape"), (data.draw(spelling(field)), value))
    answer = raw.ask(request("POST", f"/v1.41/{kind}s/create", body))
    assert answer.status in (400, 403), (answer.status, answer.message)
    assert "escape" not in gateway.engine.docker(f"{kind}", "ls", "--format", "{{.Name}}").split()


@pytest.mark.parametrize(
    "body",
    [
        obj(("privileged", True)),
        obj(("cgroupParent", "/escape")),
        obj(("devices", [{"PathOnHost": "/dev/mem", "PathInContainer": "/m"}])),
        obj(("Memory", 1 << 30), ("memory", 1 << 40)),
    ],
)
def test_update_spellings_never_widen_a_container(
    gateway: GatewayHost, raw: Raw, body: bytes
) -> None:
    name = _container(gateway)
    answer = raw.ask(request("POST", f"/v1.41/containers/{name}/update", body))
    assert answer.status in (400, 403), (answer.status, answer.message)
    info = gateway.inspect(name)["HostConfig"]
    assert info["CgroupParent"] == "" and not info["Devices"]
