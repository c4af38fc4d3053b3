"""Durable GPU usage history: per account, per hour and node, one ConfigMap per month.

The published policy (`ds01-policy`) keeps only the budget window, and ended
grants are deleted after their retention; accounting over a year needs its
own record. The operator keeps one ConfigMap per account and calendar month
(UTC), `ds01-usage-YYYY-MM` in the account namespace, labelled as the
operator's (so the `ds01-operator-objects` admission policy keeps users off
it while they can read it). It holds, per hour of the month and node,
GPU-equivalent-hours

- `used`: what the user's workloads held, as the node agents report;
- `granted`: what the user's active GPUGrants provided;
- `unused`: reserved by those grants and not used;
- `reaped`: idle time of GPU pods the operator stopped for idleness (charged
  to the hour of the stop).

Like the budget ledger, the record stores the rates it last saw (`rates`,
per node) and when (`asOf`); hours grow at those rates until they change. So
the object is written only when a rate changes, a pod is reaped, or the month
turns, and an operator restart loses nothing: the stored rates cover the time
it was away. Readers add ``rate x (now - asOf)`` themselves (`accrue`).

Encoding (`hours`): one line per run of identical hours on one node,
``<first>[-<last>] <node> <used> <granted> <unused> <reaped>``, hours counted
from the month's start (0..743), figures with at most four decimals, zero
lines left out. A steady month is a handful of lines; the worst case (every
hour different on one node) is 744 lines of about 40 bytes, 30 KB. An object
that would exceed `MAX_BYTES` (a user on very many nodes) folds its nodes into
`*`, keeping the totals exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from controller.api import names

FORMAT = "ds01.usage/v1"
NAME_PREFIX = "ds01-usage-"
COMPONENT = "usage"
"""Value of the `gpu.ds01.io/component` label on history objects."""
MONTH_LABEL = names.USAGE_MONTH
"""Kept here for controller.operator, which reads it from this module."""
NO_NODE = "-"
"""Node of a grant that holds no devices (it raises the allowance anywhere)."""
ALL_NODES = "*"
"""Node of figures folded together when an object grew too large."""
MAX_BYTES = 512 * 1024
"""Bound of one object's `hours` text; the apiserver takes at most 1.5 MiB per object."""
RETENTION = timedelta(days=400)
"""History is kept at least this long (Slurm's and DS01's accounting year, plus a month)."""
_HOUR = timedelta(hours=1)
_DECIMALS = 4
_RATE_DECIMALS = 6
"""Rates keep more digits than hours: a 2g.20gb slice (2/7) held for a month must not drift."""


@dataclass(frozen=True)
class Figures:
    """GPU-equivalent-hours (or, as rates, GPU-equivalents) of one kind each."""

    used: float = 0.0
    granted: float = 0.0
    unused: float = 0.0
    reaped: float = 0.0

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.used + other.used,
            self.granted + other.granted,
            self.unused + other.unused,
            self.reaped + other.reaped,
        )

    def scaled(self, factor: float) -> Figures:
        return Figures(self.used * factor, self.granted * factor, self.unused * factor, 0.0)

    def rounded(self, decimals: int = _DECIMALS) -> Figures:
        return Figures(*(round(v, decimals) for v in self.values()))

    def values(self) -> tuple[float, float, float, float]:
        return (self.used, self.granted, self.unused, self.reaped)

    def is_zero(self) -> bool:
        return not any(abs(v) >= 0.5 * 10**-_DECIMALS for v in self.values())


@dataclass(frozen=True)
class MonthRecord:
    """One account's history for one calendar month (UTC)."""

    user: str
    month: str
    """``YYYY-MM``."""
    groups: tuple[str, ...] = ()
    """The user's groups when the record was last written (for reports by group)."""
    hours: Mapping[tuple[int, str], Figures] = field(default_factory=dict)
    """(hour of the month, node) -> figures accounted up to `as_of`."""
    rates: Mapping[str, Figures] = field(default_factory=dict)
    """node -> GPU-equivalents seen at `as_of` (`reaped` unused)."""
    as_of: datetime | None = None


# -- months -------------------------------------------------------------------------


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def month_start(month: str) -> datetime:
    return datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)


def month_end(month: str) -> datetime:
    start = month_start(month)
    return (start + timedelta(days=32)).replace(day=1)


def next_month(month: str) -> str:
    return month_of(month_end(month))


def object_name(month: str) -> str:
    return f"{NAME_PREFIX}{month}"


def months_between(since: datetime, until: datetime) -> list[str]:
    """Every month that overlaps [since, until], oldest first."""
    months = [month_of(since)]
    while month_end(months[-1]) <= until:
        months.append(next_month(months[-1]))
    return months


def expired(month: str, now: datetime, retention: timedelta = RETENTION) -> bool:
    """Whether a month's record may be deleted: all of it is older than ``retention``."""
    return month_end(month) <= now - retention


# -- accrual -------------------------------------------------------------------------


def _add_hours(
    hours: dict[tuple[int, str], Figures],
    start: datetime,
    until: datetime,
    rates: Mapping[str, Figures],
) -> None:
    """Add ``rates`` integrated over [start, until) into ``hours`` (same month)."""
    if not rates or until <= start:
        return
    base = month_start(month_of(start))
    at = start
    while at < until:
        index = int((at - base) // _HOUR)
        end = min(base + (index + 1) * _HOUR, until)
        factor = (end - at) / _HOUR
        for node, rate in rates.items():
            if rate.is_zero():
                continue
            key = (index, node)
            hours[key] = hours.get(key, Figures()) + rate.scaled(factor)
        at = end


def accrue(record: MonthRecord, until: datetime) -> MonthRecord:
    """The record with its rates' use from `as_of` to ``until`` (at most the month's end) added."""
    if record.as_of is None:
        return record
    stop = min(until, month_end(record.month))
    if stop <= record.as_of:
        return record
    hours = dict(record.hours)
    _add_hours(hours, record.as_of, stop, record.rates)
    return replace(record, hours=hours, as_of=stop)


def _clean(rates: Mapping[str, Figures]) -> dict[str, Figures]:
    return {n: r.rounded(_RATE_DECIMALS) for n, r in sorted(rates.items()) if not r.is_zero()}


def advance(
    record: MonthRecord | None,
    user: str,
    groups: tuple[str, ...],
    rates: Mapping[str, Figures],
    now: datetime,
) -> list[MonthRecord]:
    """The records to write after seeing ``rates`` at ``now`` (empty: nothing changed).

    A new rate closes the old one's time into the hours; a turn of the month
    closes the old month's record (its rates cleared) and opens the new month
    with the rates carried over. A user who never used anything gets no record.
    """
    wanted = _clean(rates)
    month = month_of(now)
    if record is None:
        if not wanted:
            return []
        return [MonthRecord(user, month, groups, {}, wanted, now)]
    if record.month == month:
        if dict(record.rates) == wanted and record.groups == groups:
            return []
        return [replace(accrue(record, now), rates=wanted, groups=groups, as_of=now)]
    if record.month > month:
        return []  # a clock that went back: never rewrite a future month
    closed = replace(accrue(record, month_end(record.month)), rates={}) if record.rates else record
    out = [closed] if closed != record else []
    carried = _clean(record.rates)
    if not carried and not wanted:
        return out
    # The stored rates covered the time since (an operator away over the month's
    # end): every month in between gets its share, as one record each.
    between = next_month(record.month)
    while between < month:
        full = MonthRecord(user, between, groups, {}, carried, month_start(between))
        out.append(replace(accrue(full, month_end(between)), rates={}))
        between = next_month(between)
    opened = MonthRecord(user, month, groups, {}, carried, month_start(month))
    return [*out, replace(accrue(opened, now), rates=wanted, as_of=now)]


def add_reaped(record: MonthRecord, node: str, gpu_hours: float, at: datetime) -> MonthRecord:
    """The record with ``gpu_hours`` of reaped idle time charged to the hour of ``at``."""
    now = accrue(record, at)
    last = int((month_end(record.month) - month_start(record.month)) // _HOUR) - 1
    # A stop noticed just after the month turned still belongs to the record at hand.
    index = min(last, max(0, int((at - month_start(record.month)) // _HOUR)))
    hours = dict(now.hours)
    key = (index, node)
    hours[key] = hours.get(key, Figures()) + Figures(reaped=gpu_hours)
    return replace(now, hours=hours)


# -- encoding ------------------------------------------------------------------------


def _number(value: float, decimals: int = _DECIMALS) -> str:
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _line(first: int, last: int, node: str, figures: Figures) -> str:
    hours = str(first) if first == last else f"{first}-{last}"
    return " ".join([hours, node, *(_number(v) for v in figures.values())])


def encode_hours(hours: Mapping[tuple[int, str], Figures]) -> str:
    """Run-length lines per node, by node then hour; zero figures left out."""
    lines: list[str] = []
    by_node: dict[str, list[tuple[int, Figures]]] = {}
    for (index, node), figures in hours.items():
        rounded = figures.rounded()
        if not rounded.is_zero():
            by_node.setdefault(node, []).append((index, rounded))
    for node in sorted(by_node):
        run: tuple[int, int, Figures] | None = None
        for index, figures in sorted(by_node[node], key=lambda x: x[0]):
            if run is not None and run[1] + 1 == index and run[2] == figures:
                run = (run[0], index, figures)
                continue
            if run is not None:
                lines.append(_line(run[0], run[1], node, run[2]))
            run = (index, index, figures)
        if run is not None:
            lines.append(_line(run[0], run[1], node, run[2]))
    return "\n".join(lines) + ("\n" if lines else "")


def fold_nodes(record: MonthRecord) -> MonthRecord:
    """The record with every node's figures added under `ALL_NODES` (totals unchanged)."""
    hours: dict[tuple[int, str], Figures] = {}
    for (index, _node), figures in record.hours.items():
        hours[(index, ALL_NODES)] = hours.get((index, ALL_NODES), Figures()) + figures
    return replace(record, hours=hours)


def encode(record: MonthRecord) -> dict[str, str]:
    """The ConfigMap's `data`."""
    text = encode_hours(record.hours)
    if len(text.encode()) > MAX_BYTES:
        text = encode_hours(fold_nodes(record).hours)
    rates = "".join(
        " ".join([node, *(_number(v, _RATE_DECIMALS) for v in r.values()[:3])]) + "\n"
        for node, r in sorted(record.rates.items())
    )
    return {
        "format": FORMAT,
        "user": record.user,
        "groups": ",".join(record.groups),
        "month": record.month,
        "asOf": record.as_of.isoformat().replace("+00:00", "Z") if record.as_of else "",
        "rates": rates,
        "hours": text,
    }


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"asOf: {text!r} has no time zone")
    return parsed


def decode_hours(text: str) -> dict[tuple[int, str], Figures]:
    hours: dict[tuple[int, str], Figures] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 6:
            raise ValueError(f"hours line {number}: expected 6 fields, got {len(parts)}")
        first, _, last = parts[0].partition("-")
        try:
            figures = Figures(*(float(v) for v in parts[2:]))
            indexes = range(int(first), int(last or first) + 1)
        except ValueError as error:
            raise ValueError(f"hours line {number}: {error}") from None
        for index in indexes:
            if not 0 <= index < 31 * 24:
                raise ValueError(f"hours line {number}: hour {index} is outside a month")
            hours[(index, parts[1])] = figures
    return hours


def decode(data: Mapping[str, str] | None) -> MonthRecord | None:
    """A record from a ConfigMap's `data`; None when absent or not this format.

    Raises ValueError, naming the key, when the format matches but the content
    cannot be read (a reader must not mistake a damaged record for no use).
    """
    if not data or data.get("format") != FORMAT:
        return None
    month = data.get("month", "")
    try:
        month_start(month)
    except ValueError:
        raise ValueError(f"month: {month!r} is not YYYY-MM") from None
    try:
        hours = decode_hours(data.get("hours", ""))
    except ValueError as error:
        raise ValueError(f"hours: {error}") from None
    rates: dict[str, Figures] = {}
    for raw in data.get("rates", "").splitlines():
        parts = raw.split()
        if len(parts) != 4:
            raise ValueError(f"rates: {raw!r} is not '<node> <used> <granted> <unused>'")
        rates[parts[0]] = Figures(float(parts[1]), float(parts[2]), float(parts[3]))
    groups = tuple(g for g in data.get("groups", "").split(",") if g)
    return MonthRecord(
        user=data.get("user", ""),
        month=month,
        groups=groups,
        hours=hours,
        rates=rates,
        as_of=_parse_time(data.get("asOf", "")),
    )


def total(hours: Iterable[Figures]) -> Figures:
    out = Figures()
    for figures in hours:
        out = out + figures
    return out
