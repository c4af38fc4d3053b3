"""The pynvml binding: which library it loads, and what its errors mean to us.

pynvml keeps one library per process in module globals: `nvmlInit` dlopens
`libnvidia-ml.so.1` only while `pynvml.nvmlLib` is None, and every call goes
through `_nvmlGetFunctionPointer`, which caches symbols looked up on that
handle. Handing it a `ctypes.CDLL` of another path before init is therefore
the whole mechanism for loading a given library (tests load the fake one this
way; LD_LIBRARY_PATH changes after start do not reach dlopen). These are
private names of the binding, which is why the project pins it exactly.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import pynvml

Handle = Any
"""An opaque NVML handle (a ctypes pointer) as the binding returns it."""

LOST_CODES = frozenset(
    {
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_RESET_REQUIRED,
        pynvml.NVML_ERROR_GPU_NOT_FOUND,
    }
)
"""Errors meaning the GPU itself is gone (fell off the bus, needs a reset), not the call."""

MIB = 1024 * 1024


class NvmlUnavailableError(RuntimeError):
    """NVML or the device numbers cannot be read at start: the agent must not run blind."""


class GpuLostError(Exception):
    """Raised inside a scan when a call answers with one of `LOST_CODES`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def use_library(path: str | os.PathLike[str]) -> None:
    """Make the binding call the NVML library at `path` from its next `nvmlInit` on.

    Refused while another library is initialised in this process: pynvml has a
    single library slot, so two different libraries cannot be in use at once.
    """
    wanted = os.fspath(path)
    with pynvml.libLoadLock:
        current = pynvml.nvmlLib
        if current is not None and getattr(current, "_name", None) == wanted:
            return
        if current is not None and pynvml._nvmlLib_refcount > 0:
            raise NvmlUnavailableError(
                f"cannot load {wanted}: {current._name} is initialised in this process"
            )
        try:
            pynvml.nvmlLib = ctypes.CDLL(wanted)
        except OSError as exc:
            raise NvmlUnavailableError(f"cannot load NVML from {wanted}: {exc}") from exc
        # Symbols cached from a previous library would point into the old one.
        pynvml._nvmlGetFunctionPointer_cache.clear()


def error_code(exc: BaseException) -> int:
    return int(getattr(exc, "value", pynvml.NVML_ERROR_UNKNOWN))


def is_lost(exc: BaseException) -> bool:
    return error_code(exc) in LOST_CODES


def describe(exc: BaseException) -> str:
    """`GPU is lost (15)`: the binding's text with the code, for logs and health reasons."""
    return f"{exc} ({error_code(exc)})"


def address(handle: Handle) -> int:
    """A handle's pointer value: how an event's device is matched to a known GPU."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


def text(value: bytes | str) -> str:
    """Strings from struct fields arrive as bytes; from decorated calls as str."""
    return value.decode() if isinstance(value, bytes) else value
