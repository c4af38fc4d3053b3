"""Built-in defaults: the base every effective policy starts from.

These are DS01's "default" column (shared/notes/ds01-reference.md): a user no
GPURateLimit names is treated like a student. Every field is set, so the
effective policy of any user is complete.
"""

from __future__ import annotations

from controller.api.base import Subject
from controller.api.ratelimit import (
    AggregateResources,
    Bounds,
    BudgetPolicy,
    GPUPolicy,
    GPURateLimitSpec,
    GrantPolicy,
    IdleSignals,
    LifecycleOverride,
    LifecyclePolicy,
    PerWorkloadResources,
    RatePolicy,
    ResourcePolicy,
)

DEFAULT_SOURCE = "built-in defaults"

BUILT_IN = GPURateLimitSpec(
    subjects=[Subject(kind="Group", name="system:authenticated")],
    priority=0,
    description="Built-in defaults (DS01's default group).",
    gpu=GPUPolicy(
        max_gpu_equivalents=1,
        max_devices_per_workload=1,
        allow_full_gpus=True,
    ),
    grants=GrantPolicy(
        approval="Required",
        max_duration="168h",
        max_gpu_equivalents=1,
        revocation_grace="5m",
        soft_revocation=False,
    ),
    budget=BudgetPolicy(gpu_hours="Unlimited", window="168h"),
    rates=RatePolicy(
        workload_starts_per_hour="Unlimited", grant_requests_per_day=10, max_workloads=3
    ),
    resources=ResourcePolicy(
        per_workload=PerWorkloadResources(
            cpu=Bounds(default=4, max=32),
            memory=Bounds(default="16Gi", max="32Gi"),
            shm=Bounds(default="8Gi", max="16Gi"),
            pids=Bounds(default=4096, max=4096),
        ),
        per_user=AggregateResources(cpu=96, memory="96Gi", pids=12288),
    ),
    lifecycle=LifecyclePolicy(
        max_runtime="24h",
        idle_timeout="30m",
        idle=IdleSignals(
            gpu_utilization_below_percent=5,
            cpu_below_percent=2,
            network_below_bytes="1Mi",
            consecutive_checks=3,
        ),
        startup_grace="30m",
        stop_grace_period="60s",
        hold_after_stop="15m",
        remove_stopped_after="30m",
        keep_alive_max="24h",
        high_demand_threshold_percent=80,
        high_demand_idle_percent=50,
        by_workload_type=[
            LifecycleOverride(
                type="devcontainer",
                idle_timeout="Unlimited",
                max_runtime="168h",
                stop_grace_period="30s",
            ),
            LifecycleOverride(
                type="compose", idle_timeout="30m", max_runtime="72h", stop_grace_period="45s"
            ),
            LifecycleOverride(
                type="docker", idle_timeout="30m", max_runtime="48h", stop_grace_period="60s"
            ),
            LifecycleOverride(
                type="job", idle_timeout="Unlimited", max_runtime="24h", stop_grace_period="30s"
            ),
            LifecycleOverride(
                type="unknown", idle_timeout="15m", max_runtime="24h", stop_grace_period="30s"
            ),
        ],
    ),
)
"""The base layer; its `subjects` and `priority` are never used."""
