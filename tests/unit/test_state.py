"""The saved policy: written atomically, read back, and refused loudly when damaged."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.agent.publisher import PolicyView
from controller.agent.state import PolicyStore, StateError
from controller.api.node import GPUNodeSpec


def test_round_trip(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    assert store.load("node-a") is None
    spec = GPUNodeSpec.model_validate(
        {
            "enforcement": "Enforce",
            "hostAccess": [
                {
                    "user": "a@lab.example",
                    "linuxUser": "a",
                    "until": datetime(2030, 1, 1, tzinfo=UTC).isoformat(),
                    "source": {"kind": "GPUGrant", "name": "g", "namespace": "u-a"},
                }
            ],
        }
    )
    store.save(PolicyView(spec, 7), "node-a")
    loaded = store.load("node-a")
    assert loaded is not None and loaded.generation == 7 and loaded.spec == spec
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert not store.path.with_suffix(".tmp").exists()


def test_damaged_or_foreign_state_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(StateError, match=r"policy\.json: not a saved policy"):
        store.load("node-a")
    store.save(PolicyView(GPUNodeSpec(), 1), "node-b")
    with pytest.raises(StateError, match=r"saved for node 'node-b', this agent is 'node-a'"):
        store.load("node-a")
    store.path.write_text('{"node": "node-a", "generation": 1, "spec": {"enforcement": "Strict"}}')
    with pytest.raises(StateError, match="enforcement"):
        store.load("node-a")
