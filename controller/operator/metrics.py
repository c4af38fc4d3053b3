"""Prometheus metrics of the operator (served by `ds01 operator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("ds01_operator_reconciles_total", "Planning passes run")
RECONCILE_ERRORS = Counter("ds01_operator_reconcile_errors_total", "Planning passes that failed")
RECONCILE_SECONDS = Histogram(
    "ds01_operator_reconcile_duration_seconds",
    "Time to plan and write one pass",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter(
    "ds01_operator_api_writes_total", "Writes to the apiserver", ["what", "result"]
)
GRANTS = Gauge("ds01_grants", "GPUGrants by state", ["state"])
GRANTED = Gauge(
    "ds01_gpu_equivalents_granted", "GPU-equivalents of active grants per subject", ["subject"]
)
IN_USE = Gauge(
    "ds01_gpu_equivalents_in_use", "GPU-equivalents in use per subject (agent reports)", ["subject"]
)
DENIALS = Counter("ds01_denials_total", "Grant requests refused, by reason", ["reason"])
OBJECTS_FAILED = Gauge(
    "ds01_operator_objects_failed",
    "Objects set aside because they could not be decided (Ready=False Invalid/Error)",
    ["kind"],
)
GRANTS_DELETED = Counter(
    "ds01_operator_grants_deleted_total", "Ended grants deleted by the retention policy"
)
