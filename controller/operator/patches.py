"""JSON merge patches (RFC 7386): the smallest write from a stored object to a desired one."""

from __future__ import annotations

from typing import Any


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for key in old.keys() | new.keys():
            if key not in new:
                patch[key] = None
            elif key not in old:
                patch[key] = new[key]
            else:
                inner = merge_patch(old[key], new[key])
                if inner is not None:
                    patch[key] = inner
        return patch or None
    return None if old == new else new
