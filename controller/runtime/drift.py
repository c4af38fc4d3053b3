"""Generated files compared with the committed ones, as unified diffs.

Both the CRDs and the device-plugin gRPC modules are generated and committed;
CI fails when a fresh generation differs. One comparison serves both.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping


def text_diffs(committed: Mapping[str, str], fresh: Mapping[str, str], label: str) -> list[str]:
    """One unified diff per file name whose texts differ (a missing file counts as empty)."""
    diffs = []
    for name in sorted(committed.keys() | fresh.keys()):
        old, new = committed.get(name, ""), fresh.get(name, "")
        if old != new:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        new.splitlines(keepends=True),
                        f"committed/{name}",
                        f"{label}/{name}",
                    )
                )
            )
    return diffs
