"""Every HostConfig and Config field of a container, and what a user may give in it.

Deny by default: each field of the strict structs in `schemas` is in exactly
one of the tables below (a unit test keeps it so). `FREE` fields stay inside
the container whatever their value; `ZERO` fields must be absent or zero
(false, 0, "", empty, or null where null is what "unset" means); `CHECKED`
fields are judged by `create` (and `resources` for limits).
"""

from __future__ import annotations

from typing import Any

FREE_HOST = frozenset(
    {
        "ContainerIDFile",
        "AutoRemove",
        "ConsoleSize",
        "CapDrop",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "PublishAllPorts",
        "ReadonlyRootfs",
        "Tmpfs",
        "Init",
        "CpuShares",
        "BlkioWeight",
        "CpusetCpus",
        "CpusetMems",
        "KernelMemory",
        "KernelMemoryTCP",
        "MemoryReservation",
        "MemorySwappiness",
        "Ulimits",
    }
)
"""Options that stay inside the container (or only restrict it)."""

ZERO_HOST = frozenset(
    {
        "Annotations",  # reach the OCI runtime (CDI device requests, runtime hooks)
        "Cgroup",
        "Privileged",
        "CgroupParent",
        "BlkioWeightDevice",  # name host block devices
        "BlkioDeviceReadBps",
        "BlkioDeviceWriteBps",
        "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps",
        "CpuRealtimePeriod",  # real-time scheduling starves the host
        "CpuRealtimeRuntime",
        "DeviceCgroupRules",
        "OomKillDisable",
        "CpuCount",  # Windows only
        "CpuPercent",
        "IOMaximumIOps",
        "IOMaximumBandwidth",
    }
)
"""Options that reach past the container: only their zero value is accepted."""

NULL_ONLY_HOST = frozenset({"MaskedPaths", "ReadonlyPaths"})
"""Where an empty list is not "unset" but "nothing masked": only null or absent."""

CHECKED_HOST = frozenset(
    {
        "Binds",
        "LogConfig",
        "NetworkMode",
        "PortBindings",
        "RestartPolicy",
        "VolumeDriver",
        "VolumesFrom",
        "CapAdd",
        "CgroupnsMode",
        "GroupAdd",
        "IpcMode",
        "Links",
        "OomScoreAdj",
        "PidMode",
        "SecurityOpt",
        "StorageOpt",
        "UTSMode",
        "UsernsMode",
        "ShmSize",
        "Sysctls",
        "Runtime",
        "Isolation",
        "Memory",
        "NanoCpus",
        "CpuPeriod",
        "CpuQuota",
        "MemorySwap",
        "PidsLimit",
        "Devices",
        "DeviceRequests",
        "Mounts",
    }
)

FREE_CONFIG = frozenset(
    {
        "Hostname",
        "Domainname",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ExposedPorts",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Cmd",
        "Healthcheck",
        "ArgsEscaped",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "NetworkDisabled",
        "MacAddress",
        "OnBuild",
        "StopSignal",
        "StopTimeout",
        "Shell",
    }
)
CHECKED_CONFIG = frozenset({"User", "Env", "Labels", "HostConfig", "NetworkingConfig"})

FREE_ENDPOINT = frozenset(
    {
        "IPAMConfig",
        "Links",
        "Aliases",
        "MacAddress",
        "GwPriority",
        "NetworkID",
        "EndpointID",
        "Gateway",
        "IPAddress",
        "IPPrefixLen",
        "IPv6Gateway",
        "GlobalIPv6Address",
        "GlobalIPv6PrefixLen",
        "DNSNames",
    }
)
ZERO_ENDPOINT = frozenset({"DriverOpts"})

FLAGS = {
    "Annotations": "--annotation",
    "Cgroup": "--cgroup",
    "Privileged": "--privileged",
    "CgroupParent": "--cgroup-parent",
    "BlkioWeightDevice": "--blkio-weight-device",
    "BlkioDeviceReadBps": "--device-read-bps",
    "BlkioDeviceWriteBps": "--device-write-bps",
    "BlkioDeviceReadIOps": "--device-read-iops",
    "BlkioDeviceWriteIOps": "--device-write-iops",
    "CpuRealtimePeriod": "--cpu-rt-period",
    "CpuRealtimeRuntime": "--cpu-rt-runtime",
    "DeviceCgroupRules": "--device-cgroup-rule",
    "OomKillDisable": "--oom-kill-disable",
    "CpuCount": "--cpu-count",
    "CpuPercent": "--cpu-percent",
    "IOMaximumIOps": "--io-maxiops",
    "IOMaximumBandwidth": "--io-maxbandwidth",
    "MaskedPaths": "--security-opt systempaths=unconfined",
    "ReadonlyPaths": "--security-opt systempaths=unconfined",
}
"""The `docker run` flag behind a field, for messages."""

WHY = {
    "Privileged": "it gives the container the host",
    "CgroupParent": "containers stay in the engine's cgroups",
    "DeviceCgroupRules": "device access is decided by the gateway",
    "Annotations": "annotations reach the container runtime",
    "OomKillDisable": "it would shield the container from the OOM killer",
    "MaskedPaths": "containers keep the engine's default masked paths",
    "ReadonlyPaths": "containers keep the engine's default read-only paths",
}


def is_zero(value: Any) -> bool:
    """Go's zero value (or JSON null): what "not asked for" means for a ZERO field."""
    return value is None or value is False or value == 0 or value in ("", [], {})
