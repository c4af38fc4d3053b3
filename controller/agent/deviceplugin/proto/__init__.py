"""The kubelet's gRPC APIs (device plugin v1beta1, PodResources v1) as ds01 uses them.

The .proto files here are ours, written from the public definitions in
k8s.io/kubelet with kubelet's package names and field numbers; the `*_pb2*`
modules are generated from them by `python -m controller.agent.deviceplugin.codegen`
and committed (do not edit them; a test fails when they drift).
"""
