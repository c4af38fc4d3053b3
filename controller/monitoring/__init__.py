"""The Grafana dashboard and Prometheus alert rules, generated from code (`ds01 monitoring`).

Written to deploy/monitoring and drift-checked like the CRDs. Every metric
they name must exist on the real operator's or agent's /metrics, and every
expression must parse as PromQL: `tests/agent/test_monitoring.py` scrapes both.
"""
