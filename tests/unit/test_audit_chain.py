"""The audit trail is tamper-evident: deleted, edited, reordered or cut-off records are found."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.runtime.audit import AuditLog, read_records
from controller.runtime.auditchain import Anchor, matching_anchor, raw_lines, verify

KEY = b"k" * 32
T0 = datetime(2026, 12, 3, 23, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def trail(path: Path, count: int, every: int = 5) -> list[Anchor]:
    anchors: list[Anchor] = []
    log = AuditLog(path, "test", Clock(), key=KEY, checkpoint_every=every, publish=anchors.append)
    for index in range(count):
        log.write("grant.approved", "alice", {"index": index})
    return anchors


def lines(path: Path) -> list[bytes]:
    return list(raw_lines(path))


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


def test_an_untouched_trail_verifies_and_says_what_is_signed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    anchors = trail(path, 12)
    report = verify(lines(path), KEY, anchors[-1])
    assert report.ok, report.problems
    assert report.records == 14  # 12 events, 2 checkpoints
    assert report.signed_through == anchors[-1].seq == 11
    assert "not yet signed" in report.summary()


def test_a_deleted_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail(path, 12)
    content = lines(path)
    rewrite(path, content[:3] + content[4:])
    assert any("missing" in p for p in verify(lines(path), KEY).problems)


def test_an_edited_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail(path, 12)
    content = lines(path)
    content[2] = content[2].replace(b'"alice"', b'"mallory"')
    rewrite(path, content)
    assert any("does not chain" in p for p in verify(lines(path), KEY).problems)


def test_swapped_records_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail(path, 12)
    content = lines(path)
    content[2], content[3] = content[3], content[2]
    rewrite(path, content)
    problems = verify(lines(path), KEY).problems
    assert any("out of order" in p or "missing" in p for p in problems), problems


def test_a_cut_off_tail_is_found_by_the_anchor_kept_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    anchors = trail(path, 12)
    content = lines(path)
    rewrite(path, content[:6])
    assert verify(lines(path), KEY).ok  # the chain alone cannot see it
    problems = verify(lines(path), KEY, anchors[-1]).problems
    assert any("were deleted" in p for p in problems)


def test_a_forged_checkpoint_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail(path, 6)
    records = [json.loads(line) for line in lines(path)]
    assert records[5]["event_type"] == "audit.checkpoint"
    assert any("forged" in p for p in verify(lines(path), b"other key").problems)


def test_the_chain_continues_across_restarts_and_days(tmp_path: Path) -> None:
    """A new writer resumes the chain; a day's rotation keeps it; pruning leaves a valid tail."""
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    first = AuditLog(path, "test", clock, key=KEY, checkpoint_every=3)
    for index in range(4):
        first.write("a", "u", {"i": index})
    clock.now += timedelta(hours=2)  # past midnight: the next write rotates
    second = AuditLog(path, "test", clock, key=KEY, checkpoint_every=3, retention=timedelta(days=1))
    for index in range(4):
        second.write("b", "u", {"i": index})
    assert len(list(tmp_path.glob("audit.jsonl.*"))) == 1
    report = verify(lines(path), KEY)
    assert report.ok, report.problems
    seqs = [r["seq"] for r in read_records(path, bookkeeping=True)]
    assert seqs == list(range(1, report.records + 1))
    clock.now += timedelta(days=3)
    second.write("c", "u", {})  # rotates and prunes the oldest day
    report = verify(lines(path), KEY)
    assert report.ok and report.first_seq is not None and report.first_seq > 1


def test_lines_from_before_the_chain_and_a_torn_write_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    legacy = b'{"timestamp":"x","event_type":"grant.approved","user":"a","details":{}}'
    path.write_bytes(legacy + b"\n")
    trail(path, 3)
    with path.open("ab") as handle:
        handle.write(b'{"timestamp":"2026-12-0')  # a write cut short by a crash
    trail(path, 2)
    report = verify(lines(path), KEY)
    assert report.legacy == 1
    assert len(report.problems) == 1 and "not an audit record" in report.problems[0]


@settings(max_examples=60)
@given(
    size=st.integers(8, 30),
    operation=st.sampled_from(["delete", "edit", "swap", "duplicate"]),
    data=st.data(),
)
def test_any_tampering_before_the_anchor_is_found(
    tmp_path_factory, size: int, operation: str, data: st.DataObject
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("trail") / "audit.jsonl"
    anchors = trail(path, size, every=4)
    content = lines(path)
    anchor = anchors[-1]
    limit = anchor.seq - 1  # lines at index < limit are covered by the anchor
    at = data.draw(st.integers(0, max(0, limit - 2)))
    if operation == "delete":
        del content[at]
    elif operation == "edit":
        content[at] = content[at].replace(b'"test"', b'"tset"')
    elif operation == "swap":
        content[at], content[at + 1] = content[at + 1], content[at]
    else:
        content.insert(at, content[at])
    rewrite(path, content)
    assert not verify(lines(path), KEY, anchor).ok


def test_the_anchor_of_a_replicas_trail_is_found_among_all_replicas(tmp_path: Path) -> None:
    """Each operator replica keeps its own anchor; verify picks the one this trail holds."""
    mine, theirs = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    my_anchor, their_anchor = trail(mine, 6)[-1], trail(theirs, 9, every=3)[-1]
    found = matching_anchor([their_anchor, my_anchor], lines(mine))
    assert found == my_anchor
    content = lines(mine)
    rewrite(mine, content[:2])  # cut: no anchor matches; the highest is reported
    assert matching_anchor([my_anchor, their_anchor], lines(mine)) == their_anchor
    assert matching_anchor([], lines(mine)) is None
