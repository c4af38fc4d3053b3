"""Request targets read as dockerd reads them; every ambiguous spelling refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policy.docker.routes import ROUTES, RouteError, canonical, match
from controller.policy.docker.target import Target, TargetError, parse_query, parse_target


def test_the_cli_s_own_targets_read_plainly() -> None:
    target = parse_target("/v1.41/containers/create?name=a&platform=")
    assert target == Target((1, 41), ("containers", "create"), (("name", "a"), ("platform", "")))
    assert parse_target("/_ping") == Target(None, ("_ping",))
    assert parse_target("/v1.41/images/reg:5000/ns/img:tag/json").segments == (
        "images",
        "reg:5000",
        "ns",
        "img:tag",
        "json",
    )


@pytest.mark.parametrize(
    "raw",
    [
        "/v1.41.0/containers/create",  # dockerd's router takes any [0-9.]+
        "/v1..41/containers/create",
        "/v1/containers/create",
        "/v1.41//containers/create",
        "/v1.41/./containers/create",
        "/v1.41/x/../containers/create",
        "/v1.41/containers/create/",
        "http://docker/v1.41/containers/create",
        "//docker/v1.41/containers/create",
        "*",
        "/v1.41/containers/create#x",
        "/v1.41/containers/create?name=a;b",
        "/v1.41/containers/create?name=%zz",
        "/v1.41/containers%2",
        "/v1.41/%00/json",
        "/v1.41/containers/a%20b/json",
        "/",
        "/v1.41",
    ],
)
def test_targets_that_could_be_read_two_ways_are_refused(raw: str) -> None:
    with pytest.raises(TargetError):
        parse_target(raw)


def test_an_escaped_slash_is_read_as_dockerd_reads_it() -> None:
    """`containers%2Fcreate` is `containers/create` to Go's router, so to the gateway too."""
    assert parse_target("/v1.41/containers%2Fcreate").segments == ("containers", "create")
    assert parse_target("/v1.41/%63ontainers/create").segments == ("containers", "create")


def test_queries_as_go_parses_them() -> None:
    assert parse_query("a=1&&b=x+y&c=%2B&d") == (("a", "1"), ("b", "x y"), ("c", "+"), ("d", ""))


_PATH_CHARS = st.sampled_from([*list("containersvx1.:/%2F-_"), "%2f", "%63", "//", "/./", "/../"])


@given(st.lists(_PATH_CHARS, min_size=1, max_size=12).map(lambda p: "/" + "".join(p)))
def test_a_target_that_is_accepted_has_one_canonical_form(raw: str) -> None:
    """Whatever is accepted re-encodes to a target that reads back as the same request."""
    try:
        target = parse_target(raw)
    except TargetError:
        return
    encoded = target.encode()
    assert parse_target(encoded) == target
    assert "//" not in encoded and "/./" not in encoded and "/../" not in encoded
    assert "%2F" not in encoded.upper()


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {'/'.join(r.pattern)}")
def test_every_route_matches_its_own_canonical_target(route) -> None:  # type: ignore[no-untyped-def]
    names = {"c": "amy-c1", "e": "abc123", "n": "net1", "v": "vol1", "image": "reg:5000/ns/img:1"}
    segments: list[str] = []
    for part in route.pattern:
        if part == "{image}":
            segments += names["image"].split("/")
        elif part.startswith("{"):
            segments.append(names[part[1:-1]])
        else:
            segments.append(part)
    target = Target((1, 41), tuple(segments))
    found = match(route.method, target)
    assert found.route == route
    assert canonical(found) == target


@pytest.mark.parametrize(
    ("method", "raw", "status"),
    [
        ("POST", "/v1.41/plugins/pull", 403),
        ("POST", "/swarm/init", 403),
        ("POST", "/grpc", 403),
        ("GET", "/v1.41/services", 403),
        ("POST", "/v1.41/containers/x/copy", 403),
        ("PUT", "/v1.41/volumes/x", 405),
        ("POST", "/v1.41/build/prune", 403),
        ("POST", "/v1.41/images/prune", 405),  # only DELETE of an image named "prune"
        ("GET", "/v1.41/containers/create", 405),
        ("POST", "/v1.41/containers/a/b/json", 403),
    ],
)
def test_requests_off_the_allow_list_are_refused(method: str, raw: str, status: int) -> None:
    with pytest.raises(RouteError) as refused:
        match(method, parse_target(raw))
    assert refused.value.status == status


def test_parameters_are_an_allow_list_and_disagreeing_repeats_are_refused() -> None:
    with pytest.raises(RouteError, match="not accepted"):
        match("POST", parse_target("/v1.41/containers/create?name=a&HostConfig=x"))
    with pytest.raises(RouteError, match="given twice"):
        match("POST", parse_target("/v1.41/build?networkmode=bridge&networkmode=host"))
    found = match("POST", parse_target("/v1.41/build?t=a&t=b&networkmode=none&networkmode=none"))
    assert found.params == {"t": ("a", "b"), "networkmode": ("none",)}
