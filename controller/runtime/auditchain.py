"""Checking an audit trail: the hash chain, the signed checkpoints, an outside anchor.

Each record carries `seq` (one more than the record before it) and `prev`
(the SHA-256 of the previous line's bytes), across daily rotation. So a
record deleted shows as a gap, one edited as a `prev` that no longer matches
the line before it, records swapped as both. The tail is what a chain alone
cannot protect (delete the last records and the rest still links): every
`checkpoint_every` records the writer adds an `audit.checkpoint` record with
an HMAC over the chain so far (with the trail's key), and hands the
checkpoint to an anchor kept elsewhere (the operator publishes its latest in
the ConfigMap `ds01-audit-anchor`). `verify` reports every break it finds,
and which records no signature covers yet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = "audit.checkpoint"
ROTATE = "audit.rotate"
"""The first record of each day's file (after the first day)."""


def line_hash(line: bytes) -> str:
    """The hash the next record's `prev` holds (of the line's bytes, without the newline)."""
    return hashlib.sha256(line).hexdigest()


def checkpoint_mac(key: bytes, seq: int, chain: str, timestamp: str) -> str:
    """The signature of a checkpoint: the chain up to ``seq`` ends in ``chain``."""
    message = f"ds01-audit-checkpoint:{seq}:{chain}:{timestamp}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Anchor:
    """A checkpoint kept outside the trail: the trail must reach ``seq`` with this hash."""

    seq: int
    chain: str


@dataclass
class Report:
    """What `verify` found: problems (each a sentence), and what it checked."""

    problems: list[str] = field(default_factory=list)
    records: int = 0
    legacy: int = 0
    """Lines from before the trail was chained (at its start; not a problem)."""
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    signed_through: int | None = None
    """The last record a valid signature covers."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.records == 0:
            return "no audit records"
        covered = (
            f"signed through seq {self.signed_through}"
            if self.signed_through is not None
            else "no signed checkpoint"
        )
        tail = ""
        signed, last = self.signed_through, self.last_seq
        if signed is not None and last is not None and last > signed:
            tail = f"; seq {signed + 1}..{last} not yet signed"
        return (
            f"{self.records} records, seq {self.first_seq}..{self.last_seq}, "
            f"{self.checkpoints} checkpoints, {covered}{tail}"
        )


def trail_files(path: Path) -> list[Path]:
    """The trail's files, oldest first: the rotated days (YYYY-MM-DD sort), then the current."""
    days = sorted(path.parent.glob(f"{path.name}.*"))
    return [f for f in [*days, path] if f.exists()]


def raw_lines(path: Path) -> Iterator[bytes]:
    for file in trail_files(path):
        with file.open("rb") as handle:
            for line in handle:
                stripped = line.rstrip(b"\n")
                if stripped.strip():
                    yield stripped


def verify(
    lines: Iterable[bytes], key: bytes | None = None, anchor: Anchor | None = None
) -> Report:
    """Check a trail's lines in order: chain, sequence, checkpoints, anchor."""
    report = Report()
    previous: bytes | None = None
    expected: int | None = None
    hashes: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            seq = int(record["seq"])
            prev = str(record["prev"])
        except (ValueError, KeyError, TypeError):
            if report.records == 0 and _is_record(line):
                report.legacy += 1  # written before the chain began
            else:
                report.problems.append(f"line {number}: not an audit record with seq and prev")
            previous, expected = line, None
            continue
        report.records += 1
        if report.first_seq is None:
            report.first_seq = seq  # earlier days may be gone by retention, but only whole days
            if seq != 1 and record.get("event_type") != ROTATE:
                report.problems.append(
                    f"the trail starts at seq {seq} in the middle of a day: records at its "
                    "start were deleted"
                )
        elif expected is not None and seq != expected:
            what = "missing" if seq > expected else "out of order or repeated"
            report.problems.append(
                f"seq {seq} follows seq {expected - 1}: records {what} "
                f"(deleted, reordered or inserted)"
            )
        if previous is not None and prev != line_hash(previous):
            report.problems.append(
                f"seq {seq}: does not chain to the line before it (that line was edited, "
                "deleted or moved)"
            )
        if record.get("event_type") == CHECKPOINT:
            _checkpoint(record, seq, hashes, key, report)
        hashes[seq] = line_hash(line)
        report.last_seq = seq
        previous, expected = line, seq + 1
    if anchor is not None:
        if report.last_seq is None or report.last_seq < anchor.seq:
            report.problems.append(
                f"the trail ends at seq {report.last_seq} but the anchor kept outside it says "
                f"it reached seq {anchor.seq}: records at the end were deleted"
            )
        elif anchor.seq in hashes and hashes[anchor.seq] != anchor.chain:
            report.problems.append(
                f"seq {anchor.seq} differs from the anchor kept outside the trail (edited)"
            )
    return report


def _is_record(line: bytes) -> bool:
    try:
        return "event_type" in json.loads(line)
    except ValueError:
        return False


def _checkpoint(
    record: dict[str, object], seq: int, hashes: dict[int, str], key: bytes | None, report: Report
) -> None:
    details = record.get("details")
    if not isinstance(details, dict):
        report.problems.append(f"seq {seq}: a checkpoint without details")
        return
    report.checkpoints += 1
    covers = int(details.get("covers", -1))
    chain = str(details.get("chain", ""))
    if covers in hashes and hashes[covers] != chain:
        report.problems.append(f"checkpoint seq {seq}: seq {covers} was changed after it")
    if key is None:
        return
    mac = checkpoint_mac(key, covers, chain, str(record.get("timestamp", "")))
    if not hmac.compare_digest(mac, str(details.get("mac", ""))):
        report.problems.append(f"checkpoint seq {seq}: its signature does not verify (forged)")
        return
    report.signed_through = covers


def matching_anchor(anchors: list[Anchor], lines: Iterable[bytes]) -> Anchor | None:
    """The anchor kept for this trail, among several replicas' (one ConfigMap key each).

    The one whose record the trail holds unchanged; when none does (the trail was cut
    or edited), the one with the highest seq, so `verify` reports the break. None when
    there is no anchor at all.
    """
    if not anchors:
        return None
    hashes: dict[int, str] = {}
    for line in lines:
        try:
            hashes[int(json.loads(line)["seq"])] = line_hash(line)
        except (ValueError, KeyError, TypeError):
            continue
    for anchor in anchors:
        if hashes.get(anchor.seq) == anchor.chain:
            return anchor
    return max(anchors, key=lambda a: a.seq)
