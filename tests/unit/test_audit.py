"""The audit trail: DS01's envelope, bounded lines, daily rotation, 30 days kept, never raising."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.runtime.audit import MAX_LINE, AuditLog, envelope, read_records

NOW = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)


def test_envelope_has_ds01_fields() -> None:
    record = json.loads(
        envelope("grant.approved", "alice", "ds01-operator", {"grant": "u-a/g"}, NOW)
    )
    assert record == {
        "timestamp": "2026-11-25T18:30:00.000000Z",
        "event_type": "grant.approved",
        "schema_version": "1",
        "user": "alice",
        "source": "ds01-operator",
        "details": {"grant": "u-a/g"},
    }


def test_oversized_details_are_replaced_by_a_marker() -> None:
    line = envelope("grant.requested", "alice", "ds01-operator", {"reason": "x" * 10_000}, NOW)
    assert len(line.encode()) < MAX_LINE
    assert json.loads(line)["details"]["truncated"] is True


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_rotates_daily_and_prunes_after_30_days(tmp_path: Path) -> None:
    clock = Clock(NOW)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "ds01-operator", clock)
    log.write("grant.requested", "alice", {})
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    clock.now = NOW + timedelta(days=1)
    log.write("grant.active", "alice", {})
    assert (tmp_path / "audit.jsonl.2026-11-25").exists()
    assert [json.loads(x)["event_type"] for x in path.read_text().splitlines()] == [
        "audit.rotate",  # a day's file starts by naming the day before it
        "grant.active",
    ]
    for day in range(2, 40):
        clock.now = NOW + timedelta(days=day)
        log.write("grant.active", "alice", {})
    kept = sorted(p.name for p in tmp_path.glob("audit.jsonl.*"))
    assert kept[0] == "audit.jsonl." + (clock.now - timedelta(days=30)).strftime("%Y-%m-%d")
    assert "audit.jsonl.2026-11-25" not in kept
    assert len(kept) == 30  # the 30 days before today; today is audit.jsonl itself


def test_records_are_read_across_the_rotation_oldest_first(tmp_path: Path) -> None:
    clock = Clock(NOW.replace(hour=23, minute=59))
    path = tmp_path / "audit.jsonl"
    assert read_records(path) == []
    log = AuditLog(path, "ds01-agent", clock)
    log.write("access.revoke_warning", "kim", {})
    clock.now += timedelta(minutes=2)  # past midnight: the next write rotates
    log.write("access.revoke", "kim", {})
    clock.now += timedelta(days=1)
    log.write("access.grant", "kim", {})
    assert len(list(tmp_path.glob("audit.jsonl.*"))) == 2
    assert [r["event_type"] for r in read_records(path)] == [
        "access.revoke_warning",
        "access.revoke",
        "access.grant",
    ]


def test_a_failing_disk_never_raises(tmp_path: Path) -> None:
    # A regular file where the log's directory should be: every write fails, even as root.
    (tmp_path / "file").write_text("")
    log = AuditLog(tmp_path / "file" / "audit.jsonl", "ds01-operator")
    log.write("grant.requested", "alice", {})
    log.write("grant.approved", "alice", {})
    assert log.failures == 2
