"""Label, annotation and extended-resource names: the one place each is spelled.

Operator, agent, gateway and CLI read and write these on objects they do not
own (pods, containers, nodes, Docker volumes), so a name spelled twice could
drift apart silently. Names that belong to one API document stay with it:
account namespaces' labels and annotations in `controller.api.account`, the
published policy ConfigMap's in `controller.api.accountpolicy`.
"""

from __future__ import annotations

from controller.api.base import GROUP

PREFIX = f"{GROUP}/"
"""Every ds01 label, annotation and extended resource starts with this."""

# -- extended resources (the device plugin advertises them, pods request them) --------

GPU_RESOURCE = f"{PREFIX}gpu"
"""Whole GPUs."""
MIG_RESOURCE_PREFIX = f"{PREFIX}mig-"
"""MIG slices: one resource per profile, ``gpu.ds01.io/mig-2g.20gb``."""

# -- pods and Docker containers: the idle lifecycle ---------------------------------------

KEEP_ALIVE = f"{PREFIX}keep-alive"
"""Set by the user (pod annotation, container label): hold off idle reaping until this
time, at most `keepAliveMax`. The one ds01 name a user may set."""
WORKLOAD_TYPE = f"{PREFIX}workload-type"
"""Container label set by the gateway: which lifecycle rules apply."""
IDLE_SINCE = f"{PREFIX}idle-since"
"""Pod annotation: when the current idle streak began (RFC 3339)."""
IDLE_CHECKS = f"{PREFIX}idle-checks"
"""Pod annotation: idle checks in a row, counted up to `consecutiveChecks`."""
LIFECYCLE_WARNED = f"{PREFIX}lifecycle-warned"
"""Pod annotation: warnings given, comma-separated (`idle-80`, `runtime-90`, ...)."""
LIFECYCLE_WARNING = f"{PREFIX}lifecycle-warning"
"""Pod annotation: the latest warning, for people (`kubectl describe pod`)."""
LIFECYCLE_STOPPED = f"{PREFIX}lifecycle-stopped"
"""Pod annotation: why and when the operator stopped the pod's workload."""

# -- Docker objects the gateway made ---------------------------------------------------------

OWNER = f"{PREFIX}owner"
"""Owner of a container (signed), volume or network."""
DEVICES = f"{PREFIX}devices"
"""Devices a container was given (signed)."""
SIGNATURE = f"{PREFIX}signature"
"""The gateway's HMAC over a container's owner and devices."""

# -- nodes ---------------------------------------------------------------------------------------

ENFORCEMENT = f"{PREFIX}enforcement"
"""Node label: the node's enforcement mode (`Enforce`, `Audit`, `Off`)."""
AGENT_NODE = f"{PREFIX}agent-node"
"""Label on an agent's CSRs and ClusterRoleBindings: the node they belong to."""

# -- grants and usage history ---------------------------------------------------------------------

EXTENSION_NOTE = f"{PREFIX}extension-note"
"""Grant annotation an approver sets with an extension: until when, and why."""
USAGE_MONTH = f"{PREFIX}usage-month"
"""Label on usage history ConfigMaps holding ``YYYY-MM``, so readers select their months."""

# -- objects of the installation -------------------------------------------------------------------

PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "ds01-controller"
"""Value of `PART_OF_LABEL` on every object the controller creates."""
