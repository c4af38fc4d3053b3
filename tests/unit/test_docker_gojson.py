"""Bodies read as dockerd's Go decoder reads them: canonical, or refused when ambiguous."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policy.docker import schemas
from controller.policy.docker.gojson import (
    BodyError,
    ListOf,
    MapOf,
    Scalar,
    Shape,
    StrSlice,
    Struct,
    decode,
    encode,
    fold,
)

CLI_BODIES = json.loads((Path(__file__).parent / "data" / "docker_cli_bodies.json").read_text())
SHAPES = {
    "create": schemas.CREATE,
    "update": schemas.UPDATE,
    "exec": schemas.EXEC,
    "exec-start": schemas.EXEC_START,
    "volume": schemas.VOLUME_CREATE,
    "network": schemas.NETWORK_CREATE,
}


def spelling(name: str) -> st.SearchStrategy[str]:
    """Every spelling Go's field matching takes for ``name``: case, long s, Kelvin sign."""

    def spell(choices: list[int]) -> str:
        out = []
        for char, choice in zip(name, choices, strict=True):
            if choice == 2 and char in "sS":
                out.append("\u017f")
            elif choice == 2 and char in "kK":
                out.append("\u212a")
            elif choice:
                out.append(char.swapcase())
            else:
                out.append(char)
        return "".join(out)

    return st.lists(st.integers(0, 2), min_size=len(name), max_size=len(name)).map(spell)


def raw_object(*pairs: tuple[str, Any]) -> bytes:
    """A JSON object with these pairs in order, repeated keys kept (json.dumps cannot)."""
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


@pytest.mark.parametrize(
    ("kind", "index"),
    [(kind, i) for kind, entries in CLI_BODIES.items() for i in range(len(entries))],
)
def test_what_the_docker_clis_send_decodes_to_itself(kind: str, index: int) -> None:
    """Bodies captured from docker CLI 20.10 and 28.2: every field known, nothing changed."""
    body = CLI_BODIES[kind][index]["body"]
    assert decode(json.dumps(body).encode(), SHAPES[kind]) == body


@given(spelling("HostConfig"), spelling("Privileged"))
def test_any_spelling_of_a_field_is_read_as_the_field(outer: str, inner: str) -> None:
    decoded = decode(raw_object(("Image", "x"), (outer, {inner: True})), schemas.CREATE)
    assert decoded == {"Image": "x", "HostConfig": {"Privileged": True}}


@given(spelling("HostConfig"), spelling("Binds"))
def test_a_field_given_twice_in_any_spellings_is_refused(first: str, second: str) -> None:
    """Go would decode both into one field (the second merging into the first)."""
    body = raw_object((first, {"Binds": []}), ("HostConfig", {"Privileged": True}))
    with pytest.raises(BodyError, match="given twice"):
        decode(body, schemas.CREATE)
    nested = b'{"HostConfig":{"Binds":[],' + json.dumps(second).encode() + b':["/:/host"]}}'
    with pytest.raises(BodyError, match="given twice"):
        decode(nested, schemas.CREATE)


@pytest.mark.parametrize("key", ["Privileged", "Binds", "CapAdd", "privileged", "PIDMODE"])
def test_host_options_at_the_top_level_are_refused(key: str) -> None:
    """dockerd reads them through a deprecated embedded HostConfig; the gateway never does."""
    with pytest.raises(BodyError, match="unknown field"):
        decode(raw_object(("Image", "x"), (key, True)), schemas.CREATE)


def test_unknown_fields_of_a_strict_struct_are_refused_and_of_others_dropped() -> None:
    with pytest.raises(BodyError, match="HostConfig: unknown field 'Escape'"):
        decode(raw_object(("HostConfig", {"Escape": 1})), schemas.CREATE)
    assert decode(raw_object(("username", "u"), ("extra", 1)), schemas.AUTH) == {"username": "u"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"HostConfig":{"Memory":1.5}}', "expected an integer"),
        (b'{"HostConfig":{"Memory":1e3}}', "expected an integer"),
        (b'{"HostConfig":{"Memory":"1"}}', "expected an integer"),
        (b'{"HostConfig":{"Memory":true}}', "expected an integer"),
        (b'{"HostConfig":{"Memory":9223372036854775808}}', "out of range"),
        (b'{"HostConfig":{"BlkioWeight":65536}}', "out of range"),
        (b'{"HostConfig":{"IOMaximumIOps":-1}}', "out of range"),
        (b'{"HostConfig":{"Privileged":"true"}}', "expected true or false"),
        (b'{"HostConfig":{"Privileged":1}}', "expected true or false"),
        (b'{"HostConfig":{"Binds":"/:/x"}}', "expected a JSON array"),
        (b'{"HostConfig":[]}', "expected a JSON object"),
        (b'{"Image":1}', "expected a string"),
        (b'{"Image":"\\ud800"}', "unpaired surrogate"),
        (b'{"Image":"x"} {"HostConfig":{}}', "not JSON"),
        (b'{"Image":NaN}', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"Labels":{"a":"1","a":"2"}}', "key 'a' is given twice"),
    ],
)
def test_values_go_would_read_differently_or_refuse_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        decode(raw, schemas.CREATE)


def test_go_shapes_strslice_arrays_and_null() -> None:
    assert decode(b'{"Cmd":"sh"}', schemas.CREATE) == {"Cmd": ["sh"]}
    assert decode(b'{"Cmd":null,"HostConfig":null}', schemas.CREATE) == {
        "Cmd": None,
        "HostConfig": None,
    }
    assert decode(b'{"HostConfig":{"ConsoleSize":[1,2,3]}}', schemas.CREATE) == {
        "HostConfig": {"ConsoleSize": [1, 2]}
    }
    assert decode(b'{"Volumes":{"/v":{"ignored":1}}}', schemas.CREATE) == {"Volumes": {"/v": {}}}
    assert decode(b"", schemas.CREATE) == {}


def test_fold_matches_go_special_cases_and_nothing_else() -> None:
    assert fold("\u017fhm\u212aey") == "SHMKEY"
    assert fold("Privileged") == fold("pRIVILEGED")
    assert fold("Bindé") is None


def _values(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Canonical values of a shape (what the gateway forwards)."""
    if isinstance(shape, Scalar):
        return {
            "str": st.text(max_size=8),
            "bool": st.booleans(),
            "int": st.integers(-(1 << 31), 1 << 31),
            "uint": st.integers(0, (1 << min(shape.bits, 16)) - 1),
            "float": st.floats(allow_nan=False, allow_infinity=False),
            "empty": st.just({}),
        }[shape.kind]
    if isinstance(shape, StrSlice):
        return st.lists(st.text(max_size=5), max_size=3)
    if isinstance(shape, ListOf):
        size = shape.length or 2
        return st.lists(_values(shape.item, depth + 1), max_size=size if depth < 2 else 0)
    if isinstance(shape, MapOf):
        return st.dictionaries(st.text(max_size=5), _values(shape.value, depth + 1), max_size=2)
    assert isinstance(shape, Struct)
    if depth > 2 or not shape.fields:
        return st.just({})
    return st.fixed_dictionaries(
        {}, optional={k: _values(v, depth + 1) for k, v in shape.fields.items()}
    )


@given(_values(schemas.CREATE))
def test_the_canonical_form_reads_back_as_itself(body: dict[str, Any]) -> None:
    """What the gateway forwards is a fixed point: read again, it is the same object."""
    assert decode(encode(body), schemas.CREATE) == body


@given(st.sampled_from(sorted(schemas.HOST_FIELDS)), st.data())
def test_every_host_field_in_any_spelling_decodes_under_its_go_name(
    name: str, data: st.DataObject
) -> None:
    spelled = data.draw(spelling(name))
    value = data.draw(_values(schemas.HOST_FIELDS[name], 1))
    decoded = decode(raw_object(("HostConfig", {spelled: value})), schemas.CREATE)
    assert list(decoded["HostConfig"]) == [name]
