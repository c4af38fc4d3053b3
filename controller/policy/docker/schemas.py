"""The shapes of the Docker API bodies the gateway reads, as dockerd's Go structs declare them.

Field names are the JSON names of moby's `api/types` (the union over API
1.25 to 1.50, so every docker CLI the lab may have is understood; an engine
ignores fields newer than itself). Structs whose fields can hand a container
the host are `strict`: a key that matches none of their fields is refused
rather than dropped, so a field the gateway does not know is never judged
by accident. The decisions on each field live in `create`, `objects` and
`resources`; `tests/unit/test_docker_fields.py` checks that every field of
a strict struct has one.
"""

from __future__ import annotations

from controller.policy.docker.gojson import ListOf, MapOf, Scalar, Shape, StrSlice, Struct

STR = Scalar("str")
BOOL = Scalar("bool")
INT = Scalar("int")
UINT = Scalar("uint")
EMPTY = Scalar("empty")
STRS = ListOf(STR)
STR_MAP = MapOf(STR)


def _struct(name: str, strict: bool = True, **fields: Shape) -> Struct:
    return Struct(name, fields, strict)


HEALTH = _struct(
    "Healthcheck",
    Test=STRS,
    Interval=INT,
    Timeout=INT,
    StartPeriod=INT,
    StartInterval=INT,
    Retries=INT,
)

CONFIG_FIELDS: dict[str, Shape] = {
    "Hostname": STR,
    "Domainname": STR,
    "User": STR,
    "AttachStdin": BOOL,
    "AttachStdout": BOOL,
    "AttachStderr": BOOL,
    "ExposedPorts": MapOf(EMPTY),
    "Tty": BOOL,
    "OpenStdin": BOOL,
    "StdinOnce": BOOL,
    "Env": STRS,
    "Cmd": StrSlice(),
    "Healthcheck": HEALTH,
    "ArgsEscaped": BOOL,
    "Image": STR,
    "Volumes": MapOf(EMPTY),
    "WorkingDir": STR,
    "Entrypoint": StrSlice(),
    "NetworkDisabled": BOOL,
    "MacAddress": STR,
    "OnBuild": STRS,
    "Labels": STR_MAP,
    "StopSignal": STR,
    "StopTimeout": INT,
    "Shell": StrSlice(),
}

CONFIG = Struct("Config", CONFIG_FIELDS)
"""`container.Config`: a container's portable configuration (also the body of `commit`)."""

WEIGHT_DEVICE = _struct("WeightDevice", Path=STR, Weight=Scalar("uint", 16))
THROTTLE_DEVICE = _struct("ThrottleDevice", Path=STR, Rate=UINT)
DEVICE_MAPPING = _struct(
    "DeviceMapping", PathOnHost=STR, PathInContainer=STR, CgroupPermissions=STR
)
DEVICE_REQUEST = _struct(
    "DeviceRequest",
    Driver=STR,
    Count=INT,
    DeviceIDs=STRS,
    Capabilities=ListOf(STRS),
    Options=STR_MAP,
)
ULIMIT = _struct("Ulimit", Name=STR, Hard=INT, Soft=INT)

RESOURCE_FIELDS: dict[str, Shape] = {
    "CpuShares": INT,
    "Memory": INT,
    "NanoCpus": INT,
    "CgroupParent": STR,
    "BlkioWeight": Scalar("uint", 16),
    "BlkioWeightDevice": ListOf(WEIGHT_DEVICE),
    "BlkioDeviceReadBps": ListOf(THROTTLE_DEVICE),
    "BlkioDeviceWriteBps": ListOf(THROTTLE_DEVICE),
    "BlkioDeviceReadIOps": ListOf(THROTTLE_DEVICE),
    "BlkioDeviceWriteIOps": ListOf(THROTTLE_DEVICE),
    "CpuPeriod": INT,
    "CpuQuota": INT,
    "CpuRealtimePeriod": INT,
    "CpuRealtimeRuntime": INT,
    "CpusetCpus": STR,
    "CpusetMems": STR,
    "Devices": ListOf(DEVICE_MAPPING),
    "DeviceCgroupRules": STRS,
    "DeviceRequests": ListOf(DEVICE_REQUEST),
    "KernelMemory": INT,
    "KernelMemoryTCP": INT,
    "MemoryReservation": INT,
    "MemorySwap": INT,
    "MemorySwappiness": INT,
    "OomKillDisable": BOOL,
    "PidsLimit": INT,
    "Ulimits": ListOf(ULIMIT),
    "CpuCount": INT,
    "CpuPercent": INT,
    "IOMaximumIOps": UINT,
    "IOMaximumBandwidth": UINT,
}
"""`container.Resources`, embedded in HostConfig and UpdateConfig (its fields sit inline)."""

MOUNT = _struct(
    "Mount",
    Type=STR,
    Source=STR,
    Target=STR,
    ReadOnly=BOOL,
    Consistency=STR,
    BindOptions=_struct(
        "BindOptions",
        Propagation=STR,
        NonRecursive=BOOL,
        CreateMountpoint=BOOL,
        ReadOnlyNonRecursive=BOOL,
        ReadOnlyForceRecursive=BOOL,
    ),
    VolumeOptions=_struct(
        "VolumeOptions",
        NoCopy=BOOL,
        Labels=STR_MAP,
        Subpath=STR,
        DriverConfig=_struct("DriverConfig", Name=STR, Options=STR_MAP),
    ),
    ImageOptions=_struct("ImageOptions", Subpath=STR),
    TmpfsOptions=_struct(
        "TmpfsOptions", SizeBytes=INT, Mode=Scalar("uint", 32), Options=ListOf(STRS)
    ),
    ClusterOptions=_struct("ClusterOptions"),
)

PORT_BINDING = _struct("PortBinding", HostIp=STR, HostPort=STR)
RESTART_POLICY = _struct("RestartPolicy", Name=STR, MaximumRetryCount=INT)

HOST_FIELDS: dict[str, Shape] = {
    "Binds": STRS,
    "ContainerIDFile": STR,
    "LogConfig": _struct("LogConfig", Type=STR, Config=STR_MAP),
    "NetworkMode": STR,
    "PortBindings": MapOf(ListOf(PORT_BINDING)),
    "RestartPolicy": RESTART_POLICY,
    "AutoRemove": BOOL,
    "VolumeDriver": STR,
    "VolumesFrom": STRS,
    "ConsoleSize": ListOf(UINT, length=2),
    "Annotations": STR_MAP,
    "CapAdd": StrSlice(),
    "CapDrop": StrSlice(),
    "CgroupnsMode": STR,
    "Dns": STRS,
    "DnsOptions": STRS,
    "DnsSearch": STRS,
    "ExtraHosts": STRS,
    "GroupAdd": STRS,
    "IpcMode": STR,
    "Cgroup": STR,
    "Links": STRS,
    "OomScoreAdj": INT,
    "PidMode": STR,
    "Privileged": BOOL,
    "PublishAllPorts": BOOL,
    "ReadonlyRootfs": BOOL,
    "SecurityOpt": STRS,
    "StorageOpt": STR_MAP,
    "Tmpfs": STR_MAP,
    "UTSMode": STR,
    "UsernsMode": STR,
    "ShmSize": INT,
    "Sysctls": STR_MAP,
    "Runtime": STR,
    "Isolation": STR,
    **RESOURCE_FIELDS,
    "Mounts": ListOf(MOUNT),
    "MaskedPaths": STRS,
    "ReadonlyPaths": STRS,
    "Init": BOOL,
}

HOST_CONFIG = Struct("HostConfig", HOST_FIELDS)

ENDPOINT = _struct(
    "EndpointSettings",
    IPAMConfig=_struct("EndpointIPAMConfig", IPv4Address=STR, IPv6Address=STR, LinkLocalIPs=STRS),
    Links=STRS,
    Aliases=STRS,
    MacAddress=STR,
    DriverOpts=STR_MAP,
    GwPriority=INT,
    NetworkID=STR,
    EndpointID=STR,
    Gateway=STR,
    IPAddress=STR,
    IPPrefixLen=INT,
    IPv6Gateway=STR,
    GlobalIPv6Address=STR,
    GlobalIPv6PrefixLen=INT,
    DNSNames=STRS,
)

NETWORKING = _struct("NetworkingConfig", EndpointsConfig=MapOf(ENDPOINT))

CREATE = Struct(
    "body",
    {**CONFIG_FIELDS, "HostConfig": HOST_CONFIG, "NetworkingConfig": NETWORKING},
)
"""`POST /containers/create`: Config inline, HostConfig and NetworkingConfig nested.

dockerd still decodes host options given at the top level (a deprecated
embedded HostConfig) and, with no `HostConfig` key, uses them: they are
unknown fields here, so they are refused.
"""

UPDATE = Struct("body", {**RESOURCE_FIELDS, "RestartPolicy": RESTART_POLICY})
"""`POST /containers/{id}/update`: `container.UpdateConfig`."""

EXEC = _struct(
    "body",
    User=STR,
    Privileged=BOOL,
    Tty=BOOL,
    ConsoleSize=ListOf(UINT, length=2),
    AttachStdin=BOOL,
    AttachStderr=BOOL,
    AttachStdout=BOOL,
    Detach=BOOL,
    DetachKeys=STR,
    Env=STRS,
    WorkingDir=STR,
    Cmd=StrSlice(),
)
"""`POST /containers/{id}/exec`: `container.ExecOptions`."""

EXEC_START = _struct("body", Detach=BOOL, Tty=BOOL, ConsoleSize=ListOf(UINT, length=2))

VOLUME_CREATE = _struct(
    "body",
    Name=STR,
    Driver=STR,
    DriverOpts=STR_MAP,
    Labels=STR_MAP,
    ClusterVolumeSpec=_struct("ClusterVolumeSpec"),
)

IPAM_CONFIG = _struct(
    "IPAMConfig", Subnet=STR, IPRange=STR, Gateway=STR, AuxiliaryAddresses=STR_MAP
)

NETWORK_CREATE = _struct(
    "body",
    Name=STR,
    CheckDuplicate=BOOL,
    Driver=STR,
    Scope=STR,
    EnableIPv4=BOOL,
    EnableIPv6=BOOL,
    IPAM=_struct("IPAM", Driver=STR, Options=STR_MAP, Config=ListOf(IPAM_CONFIG)),
    Internal=BOOL,
    Attachable=BOOL,
    Ingress=BOOL,
    ConfigOnly=BOOL,
    ConfigFrom=_struct("ConfigFrom", Network=STR),
    Options=STR_MAP,
    Labels=STR_MAP,
)

NETWORK_CONNECT = _struct("body", Container=STR, EndpointConfig=ENDPOINT, Force=BOOL)
"""`POST /networks/{id}/connect` and `.../disconnect` (Force only means something there)."""

AUTH = _struct(
    "body",
    strict=False,
    username=STR,
    password=STR,
    auth=STR,
    email=STR,
    serveraddress=STR,
    identitytoken=STR,
    registrytoken=STR,
)
"""`POST /auth`: registry credentials, checked against the registry by the engine."""
