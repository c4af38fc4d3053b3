"""Argo CD's health checks for ds01's kinds, run as Argo CD runs them.

The scripts are the ones an admin installs (deploy/argocd/argocd-cm.yaml).
Argo CD evaluates them with gopher-lua, a Lua 5.1: the object is the global
`obj`, the script returns a table with `status` and `message`. Here the same
scripts run in the reference Lua 5.1 (lupa), with `os`, `io`, `require` and
the loaders removed, so a script that leans on anything beyond Argo CD's
sandbox (base, string, table, math) fails here first.
"""

from __future__ import annotations

from typing import Any

import yaml
from lupa.lua51 import LuaRuntime

from controller.devcluster.binaries import source_root

CONFIGMAP = source_root() / "deploy" / "argocd" / "argocd-cm.yaml"
PREFIX = "resource.customizations.health.gpu.ds01.io_"
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
"""The health values Argo CD accepts from a script."""
_OUTSIDE_SANDBOX = ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "package")


def scripts() -> dict[str, str]:
    """Kind -> Lua health script."""
    data = yaml.safe_load(CONFIGMAP.read_text())["data"]
    return {key.removeprefix(PREFIX): text for key, text in data.items() if key.startswith(PREFIX)}


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) Argo CD would show for ``obj`` (a whole object from the apiserver)."""
    lua = LuaRuntime(register_eval=False, register_builtins=False)
    names = lua.globals()
    for name in _OUTSIDE_SANDBOX:
        names[name] = None
    names.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(scripts()[obj["kind"]])
    status, message = str(result["status"]), str(result["message"] or "")
    assert status in STATUSES, f"{obj['kind']} health {status!r} is not one Argo CD accepts"
    return status, message
