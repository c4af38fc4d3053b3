"""The kubelet device plugin: GPUs and MIG slices as extended resources, with health and topology.

`DevicePluginManager` (manager.py) is what the agent runs: one gRPC server per
resource on the kubelet's device-plugin directory, re-registered across kubelet
restarts. The other modules are its parts, each readable alone:

- devices.py: one resource's slots and health, shared by gRPC threads and the agent;
- allocate.py: the device nodes, CDI names and envs a container is given;
- preferred.py: NVLink- and PCI-aware choice for GetPreferredAllocation (pure);
- server.py: the DevicePlugin servicer and one resource's socket and registration;
- simkubelet.py: kubelet's side, simulated, for tests and benchmarks;
- proto/: our .proto files and the generated modules (codegen.py regenerates them).

Nothing is imported here, so `python -m controller.agent.deviceplugin.codegen` runs
even when the committed generated modules are stale or broken.
"""
