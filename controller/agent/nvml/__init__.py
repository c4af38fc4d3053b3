"""The NVML layer of the node agent: inventory, samples, XID health, through `pynvml`.

`Nvml` is the entry point (see `controller.agent.nvml.node`); the rest are its
parts, each small enough to read alone: `binding` (loading the library, error
classes), `devnodes` (device numbers from the proc and dev roots), `mig`,
`nvlink`, and `health` (why a device is unhealthy and how it recovers).
"""

from controller.agent.nvml.binding import NvmlUnavailableError, use_library
from controller.agent.nvml.health import APPLICATION_XIDS, HealthLedger
from controller.agent.nvml.mig import profile_name
from controller.agent.nvml.node import Nvml, Scan

__all__ = [
    "APPLICATION_XIDS",
    "HealthLedger",
    "Nvml",
    "NvmlUnavailableError",
    "Scan",
    "profile_name",
    "use_library",
]
