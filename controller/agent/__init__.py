"""The node agent: NVML inventory, workload attribution, device plugin, kernel enforcement.

Arrives with the node-agent issues (see README); host paths are all configurable
so tests run it against prepared trees.
"""
