"""A simulated GPU node: a fake NVML library (C), its topology file and a device tree.

Only the GPU is simulated (DESIGN.md section 7): the agent loads this library
through the same `pynvml` binding it uses in production, so every ctypes
signature, struct layout and versioned symbol name is exercised for real. It
ships in the package (the C sources are package data) because `ds01 dev up`
runs a real agent on such a node, and the agent tests drive the same code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from controller.devcluster.fakegpu.topology import (
    A100_SXM4_40GB,
    A100_SXM4_80GB,
    TOPOLOGY_ENV,
    GpuModel,
    GpuSpec,
    LinkSpec,
    MigSpec,
    ProcSpec,
    Topology,
    XidSpec,
    a100_node,
    packed,
)

__all__ = [
    "A100_SXM4_40GB",
    "A100_SXM4_80GB",
    "LIBRARY_NAME",
    "SOURCES",
    "TOPOLOGY_ENV",
    "GpuModel",
    "GpuSpec",
    "LinkSpec",
    "MigSpec",
    "ProcSpec",
    "Topology",
    "XidSpec",
    "a100_node",
    "build",
    "packed",
]

LIBRARY_NAME = "libnvidia-ml.so.1"
"""The soname pynvml dlopens; the fake keeps it so either loading route works."""
_HERE = Path(__file__).resolve().parent
SOURCES = (_HERE / "fakenvml.h", _HERE / "topology.c", _HERE / "api.c")
_CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden")


def _fingerprint() -> str:
    digest = hashlib.sha256(" ".join(_CFLAGS).encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def build(dest: Path) -> Path:
    """Compile the fake into ``dest/libnvidia-ml.so.1``, unless it is already current.

    A stamp file beside the library records the hash of the sources and flags,
    so a persistent cache folder is rebuilt only when the C code changed. The
    library is linked under a temporary name and renamed into place, so a
    process that has the old one loaded keeps a valid mapping and concurrent
    builders never see a half-written file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    library = dest / LIBRARY_NAME
    stamp = dest / f"{LIBRARY_NAME}.sha256"
    fingerprint = _fingerprint()
    if library.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return library
    fd, partial = tempfile.mkstemp(prefix=".fakenvml-", suffix=".so", dir=dest)
    os.close(fd)
    c_files = [str(s) for s in SOURCES if s.suffix == ".c"]
    result = subprocess.run(
        ["gcc", *_CFLAGS, "-o", partial, *c_files, "-lpthread"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        Path(partial).unlink(missing_ok=True)
        raise RuntimeError(f"building the fake NVML library failed:\n{result.stderr}")
    os.replace(partial, library)
    stamp.write_text(fingerprint)
    return library
