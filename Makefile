# The README's two commands are `make up` and `make test`; each installs what
# it needs on first run (scripts/bootstrap, then the Go builds, cached outside
# the repository).
VENV := .venv/bin

.PHONY: up down test lint unit build crds bench bootstrap

# As root on Debian, `up` first installs what the node agent needs (one list,
# shared with .ci/run); elsewhere it says what is missing and runs without it.
up: bootstrap
	@scripts/host-packages --install || true
	$(VENV)/ds01 dev up

down: bootstrap
	$(VENV)/ds01 dev down

test: lint build
	$(VENV)/python -m pytest

unit: bootstrap
	$(VENV)/python -m pytest tests/unit

lint: bootstrap
	$(VENV)/ruff check controller tests benchmarks
	$(VENV)/ruff format --check controller tests benchmarks
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/ds01 crds check
	$(VENV)/ds01 monitoring check

build: bootstrap
	$(VENV)/ds01 dev build

crds: bootstrap
	$(VENV)/ds01 crds render

bootstrap:
	@scripts/bootstrap

# Not a test: prints time-to-Active p50/p99, throughput and operator RSS.
bench: build
	$(VENV)/python -m benchmarks.operator_grants
	$(VENV)/python -m benchmarks.agent_scan
	$(VENV)/python -m benchmarks.device_plugin
	$(VENV)/python -m benchmarks.revocation
	$(VENV)/python -m benchmarks.gateway
	$(VENV)/python -m benchmarks.operator_failover
