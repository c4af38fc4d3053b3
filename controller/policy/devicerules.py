"""A container's device cgroup rules, and the same rules closed to GPUs it may not open.

The rules are the OCI bundle's `linux.resources.devices`: what runc turns into the
container's device cgroup *before* the container's first process runs (cgroup v1:
writes to `devices.allow`/`devices.deny` at `runc create`; cgroup v2: the eBPF
program it attaches then). Rewriting them in the bundle therefore closes a GPU with
no window at start, which a rule written after the start cannot.

runc does not apply the list literally. It first runs it through an emulator of the
v1 kernel semantics (on v2 too, before building the eBPF program), which this module
models (`Emulator`, after runc's `devices_emulator.go`, 1.0 to 1.3):

- a rule of type `a` (any major/minor) resets everything: allow = default-allow
  ("blacklist"), deny = default-deny ("whitelist");
- otherwise a rule *adds* an exception when it goes against the default and
  *removes* one with exactly the same type/major/minor when it goes with it; a
  removal that would punch a hole in a wildcard exception is an error (runc refuses
  the container rather than silently ignore it, as the kernel would);
- runc then appends its own built-in rules (`RUNC_APPENDED`) after the bundle's.

So order matters, wildcards cannot be subtracted from in a whitelist, and a deny
cannot be undone by an exact allow in a blacklist. `rewrite` does not reason about
the list's order at all: it computes the state the list ends in and writes it out
again in one of two unambiguous shapes, with every GPU number the container may not
open taken out:

- whitelist: `deny a`, then only allows, none of which covers such a number (a
  wildcard allow that did is narrowed to the container's own GPU numbers it covered;
  what else it covered is lost, documented in docs/agent.md);
- blacklist: `allow a`, then only denies, including one per such number.

Numbers are (major, minor) of character devices: GPUs are never block devices.
Only opening matters (`r`, `w`); `m` (mknod) makes a node but never opens it, and
runc allows it for every device anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

# Named tuples and plain classes rather than dataclasses: the runtime wrapper imports
# this module on every container start, and frozen dataclasses cost it tens of ms.

Kind = Literal["a", "b", "c"]
"""`a` all devices, `b` block, `c` character (the OCI and cgroup letters)."""

Number = tuple[int, int]
"""A character device's (major, minor)."""

_KINDS: dict[str, Kind] = {"a": "a", "b": "b", "c": "c"}

ACCESS = "rwm"
OPEN = frozenset("rw")
"""The access letters that open a device (`m` only creates a node)."""

Key = tuple[str, int | None, int | None]
"""An exception's (type, major, minor); None is the wildcard `*`."""


class RuleError(ValueError):
    """Device rules that cannot be read or that runc itself would refuse."""


class DeviceRule(NamedTuple):
    """One entry of `linux.resources.devices`."""

    allow: bool
    kind: Kind
    major: int | None = None
    """None: any major (`*`)."""
    minor: int | None = None
    """None: any minor (`*`)."""
    access: str = ACCESS
    """A non-empty subset of `rwm`, in that order."""


def _access(letters: Iterable[str]) -> str:
    chosen = set(letters)
    return "".join(ch for ch in ACCESS if ch in chosen)


def _number(value: object, where: str) -> int | None:
    """An OCI major/minor: absent, null or -1 is runc's wildcard; else a number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{where}: must be an integer or null, not {value!r}")
    if value == -1:
        return None
    if value < 0:
        raise RuleError(f"{where}: must be >= 0 (or -1/null for any), not {value}")
    return value


def parse_rules(value: object, where: str = "linux.resources.devices") -> list[DeviceRule]:
    """The bundle's device rules, checked as runc checks them (errors name the field)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise RuleError(f"{where}: must be a list, not {type(value).__name__}")
    rules = []
    for index, entry in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise RuleError(f"{at}: must be an object, not {type(entry).__name__}")
        allow = entry.get("allow")
        if not isinstance(allow, bool):
            raise RuleError(f"{at}.allow: must be true or false, not {allow!r}")
        raw = entry.get("type") or "a"
        kind = _KINDS.get(raw) if isinstance(raw, str) else None
        if kind is None:
            raise RuleError(f"{at}.type: must be one of a, b, c, not {raw!r}")
        access = entry.get("access")
        if not isinstance(access, str) or not access or set(access) - set(ACCESS):
            raise RuleError(f"{at}.access: must be a non-empty string of r, w, m; not {access!r}")
        rules.append(
            DeviceRule(
                allow=allow,
                kind=kind,
                major=_number(entry.get("major"), f"{at}.major"),
                minor=_number(entry.get("minor"), f"{at}.minor"),
                access=_access(access),
            )
        )
    return rules


def to_oci(rule: DeviceRule) -> dict[str, object]:
    """The rule as a `linux.resources.devices` entry (wildcards left out, as null means)."""
    out: dict[str, object] = {"allow": rule.allow, "type": rule.kind, "access": rule.access}
    if rule.kind != "a":
        if rule.major is not None:
            out["major"] = rule.major
        if rule.minor is not None:
            out["minor"] = rule.minor
    return out


RUNC_APPENDED: tuple[DeviceRule, ...] = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    DeviceRule(True, "c", 1, 3),  # /dev/null
    DeviceRule(True, "c", 1, 8),  # /dev/random
    DeviceRule(True, "c", 1, 7),  # /dev/full
    DeviceRule(True, "c", 5, 0),  # /dev/tty
    DeviceRule(True, "c", 1, 5),  # /dev/zero
    DeviceRule(True, "c", 1, 9),  # /dev/urandom
    DeviceRule(True, "c", 136, None),  # /dev/pts/*
    DeviceRule(True, "c", 5, 2),  # /dev/ptmx
    DeviceRule(True, "c", 10, 200),  # /dev/net/tun
)
"""What runc appends after the bundle's rules for every container (its `AllowedDevices`;
some releases leave out tun, or a node the bundle lists itself: fewer allows, never more).
A GPU number among these cannot be closed at creation; real GPU drivers never use them."""


class HoleError(RuleError):
    """A removal inside a wildcard exception: runc refuses the container."""


class Emulator:
    """The state a device cgroup ends in: a default and the exceptions to it."""

    def __init__(self) -> None:
        self.default_allow = False
        self.exceptions: dict[Key, frozenset[str]] = {}

    def apply(self, rule: DeviceRule) -> None:
        if rule.kind == "a":
            self.default_allow, self.exceptions = rule.allow, {}
            return
        key: Key = (rule.kind, rule.major, rule.minor)
        letters = frozenset(rule.access)
        if rule.allow != self.default_allow:
            self.exceptions[key] = self.exceptions.get(key, frozenset()) | letters
            return
        partials: tuple[Key, ...] = (
            (rule.kind, None, rule.minor),
            (rule.kind, rule.major, None),
            (rule.kind, None, None),
        )
        for partial in partials:
            if partial != key and self.exceptions.get(partial, frozenset()) & letters:
                raise HoleError(
                    f"rule {_show(rule)} would punch a hole in the wildcard rule "
                    f"{_show_key(partial)}: runc refuses that"
                )
        left = self.exceptions.get(key, frozenset()) - letters
        if left:
            self.exceptions[key] = left
        else:
            self.exceptions.pop(key, None)

    def allows(self, kind: str, number: Number, letter: str) -> bool:
        """Whether a process in the cgroup may access the device with ``letter`` (r, w or m)."""
        matched = any(
            _matches(key, kind, number) and letter in letters
            for key, letters in self.exceptions.items()
        )
        return not matched if self.default_allow else matched


def _matches(key: Key, kind: str, number: Number) -> bool:
    """Whether an exception's type/major/minor match the device."""
    key_kind, major, minor = key
    return (
        key_kind == kind
        and (major is None or major == number[0])
        and (minor is None or minor == number[1])
    )


def emulate(rules: Iterable[DeviceRule]) -> Emulator:
    """The state runc puts a new container's cgroup in for ``rules`` (default: deny all)."""
    emulator = Emulator()
    for rule in rules:
        emulator.apply(rule)
    return emulator


def _show_key(key: Key) -> str:
    kind, major, minor = key
    return f"{kind} {'*' if major is None else major}:{'*' if minor is None else minor}"


def _show(rule: DeviceRule) -> str:
    verb = "allow" if rule.allow else "deny"
    return f"{verb} {_show_key((rule.kind, rule.major, rule.minor))} {rule.access}"


class GpuDevices(NamedTuple):
    """What counts as a GPU device on this host."""

    numbers: frozenset[Number]
    """Exact numbers: every GPU and MIG capability node, and the control devices."""
    majors: frozenset[int] = frozenset()
    """Majors that belong to the GPU driver entirely (`nvidia*` in /proc/devices): every
    minor of them is a GPU device, known to the inventory or not."""

    def is_gpu(self, number: Number) -> bool:
        return number in self.numbers or number[0] in self.majors


def driver_majors(proc_devices: str) -> frozenset[int]:
    """Character majors the NVIDIA driver registered, from /proc/devices' text."""
    majors: set[int] = set()
    in_char = False
    for line in proc_devices.splitlines():
        text = line.strip()
        if text.endswith(":"):
            in_char = text == "Character devices:"
            continue
        fields = text.split()
        if in_char and len(fields) == 2 and fields[0].isdigit() and fields[1].startswith("nvidia"):
            majors.add(int(fields[0]))
    return frozenset(majors)


_RUNC_MAJORS = frozenset(r.major for r in RUNC_APPENDED if r.major is not None)


def _closed_out(key: Key, gpu: GpuDevices, entitled: frozenset[Number]) -> bool:
    """Whether an allow exception for ``key`` would let in a GPU number not in ``entitled``."""
    kind, major, minor = key
    if kind != "c":
        return False
    if any(_matches(key, "c", number) for number in gpu.numbers - entitled):
        return True
    for owned in gpu.majors:
        if major is not None and major != owned:
            continue
        if minor is None or (owned, minor) not in entitled:
            return True
    return False


def _narrowed(
    key: Key, letters: frozenset[str], gpu: GpuDevices, entitled: frozenset[Number]
) -> list[DeviceRule]:
    """A whitelist exception as allows that open no GPU number outside ``entitled``."""
    kind, major, minor = key
    opening = letters & OPEN
    if not opening or not _closed_out(key, gpu, entitled):
        return [DeviceRule(True, kind, major, minor, _access(letters))]  # type: ignore[arg-type]
    out: list[DeviceRule] = []
    if "m" in letters:
        out.append(DeviceRule(True, "c", major, minor, "m"))
    out += [
        DeviceRule(True, "c", number[0], number[1], _access(opening))
        for number in sorted(entitled)
        if _matches(key, "c", number)
    ]
    return out


def rewrite(
    rules: Sequence[DeviceRule], gpu: GpuDevices, entitled: Iterable[Number]
) -> list[DeviceRule]:
    """``rules`` with every GPU number outside ``entitled`` closed; nothing else opened.

    Entitled GPU numbers keep exactly the access the original rules gave them (a
    container that did not map a device does not get it by being entitled to it).
    Raises `RuleError` when runc would refuse the original rules anyway.
    """
    allowed = frozenset(entitled)
    state = emulate(rules)
    if not state.default_allow:
        out = [DeviceRule(False, "a")]
        for key, letters in sorted(state.exceptions.items(), key=_order):
            out += _narrowed(key, letters, gpu, allowed)
        return out
    out = [DeviceRule(True, "a")]
    out += [
        DeviceRule(False, kind, major, minor, _access(letters))  # type: ignore[arg-type]
        for (kind, major, minor), letters in sorted(state.exceptions.items(), key=_order)
    ]
    out += [DeviceRule(False, "c", n[0], n[1]) for n in sorted(gpu.numbers - allowed)]
    for owned in sorted(gpu.majors):
        # A wildcard deny cannot be reopened for one minor (nor reach under runc's own
        # exact allows on that major without an error): deny what is known instead.
        if owned not in _RUNC_MAJORS and not any(n[0] == owned for n in allowed):
            out.append(DeviceRule(False, "c", owned, None))
    return out


def _order(item: tuple[Key, frozenset[str]]) -> tuple[str, int, int]:
    (kind, major, minor), _ = item
    return (kind, -1 if major is None else major, -1 if minor is None else minor)


def opens_gpu(rules: Sequence[DeviceRule], gpu: GpuDevices) -> bool:
    """Whether ``rules`` let the container open any GPU device at all (then, and only
    then, its entitlement matters: `rewrite` with none would change nothing else)."""
    state = emulate(rules)
    if state.default_allow:
        return bool(gpu.numbers or gpu.majors)
    return any(
        letters & OPEN and _closed_out(key, gpu, frozenset())
        for key, letters in state.exceptions.items()
    )


def left_open(
    rules: Sequence[DeviceRule], gpu: GpuDevices, entitled: Iterable[Number]
) -> list[Number]:
    """Known GPU numbers outside ``entitled`` that ``rules`` (plus runc's own) still open.

    Empty for `rewrite`'s output unless a GPU number is one runc always allows
    (`RUNC_APPENDED`), which no real driver's is.
    """
    allowed = frozenset(entitled)
    state = emulate([*rules, *RUNC_APPENDED])
    return sorted(
        n
        for n in gpu.numbers - allowed
        if any(state.allows("c", n, letter) for letter in sorted(OPEN))
    )
