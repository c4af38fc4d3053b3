"""`ds01 ...` that traces its allocations from a signal on (see `benchmarks.operator_memory`).

Usage: python -m benchmarks.traced_operator SNAPSHOT FRAMES ds01-arguments...
The first SIGUSR1 starts tracemalloc (imports and start-up are not traced: under
tracing they take minutes); each later one writes a snapshot of what was allocated
since and still lives to SNAPSHOT. Either way SNAPSHOT with suffix `.done` is then
created.
"""

from __future__ import annotations

import gc
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

from controller.cli.main import main


def run(argv: list[str]) -> int:
    snapshot, frames, rest = Path(argv[0]), int(argv[1]), argv[2:]

    def dump(_signum: int, _frame: FrameType | None) -> None:
        gc.collect()
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(snapshot))
        else:
            tracemalloc.start(frames)
        snapshot.with_suffix(".done").touch()

    signal.signal(signal.SIGUSR1, dump)
    return main(rest)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
