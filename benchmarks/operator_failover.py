"""Benchmark: the operator's failover under a burst of 500 grants (issue 12, item 5).

Starts its own local control plane and two operator replicas (as the
operator's ServiceAccount, default Lease timings: 15 s lease, 10 s renew
deadline, 2 s retry), creates 500 auto-approved grants for 50 users with 8
clients (a third reserving contested devices), and SIGKILLs the Lease holder
once half were created and it has activated some (the other half arrive
while nobody leads). Prints how long after the
kill the other replica held the Lease, wrote its first record, and every
grant had converged, and the same checks as
`tests/controlplane/test_operator_ha.py` (which runs 150 grants with short
timings in CI). Not a test: it asserts nothing; exit status 1 if a check failed.

    python -m benchmarks.operator_failover [--grants 500] [--lease 15s --renew 10s --retry 2s]
        [--graceful]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from controller.cli.dev import install
from controller.devcluster.controlplane import LocalCluster
from controller.devcluster.process import wait_until
from tests.controlplane import failover
from tests.controlplane.kube import Kube


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=500)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--lease", default="15s")
    parser.add_argument("--renew", default="10s")
    parser.add_argument("--retry", default="2s")
    parser.add_argument(
        "--graceful", action="store_true", help="SIGTERM the leader (it releases the Lease)"
    )
    args = parser.parse_args()
    timings = (args.lease, args.renew, args.retry)

    with LocalCluster(Path(tempfile.mkdtemp(prefix="ds01-failover-"))) as cluster:
        install(cluster, samples=False)
        admin = Kube(cluster, cluster.kubeconfig)
        accounts = failover.prepare(cluster, admin, args.users)
        first = failover.start_replica(cluster, "replica-a", timings)
        wait_until(
            lambda: failover.lease(admin).holder_identity == "replica-a", 60, "replica-a to lead"
        )
        second = failover.start_replica(cluster, "replica-b", timings)
        outcome = failover.run(
            cluster, admin, [first, second], accounts, args.grants, 900, args.graceful
        )
        how = "SIGTERM" if args.graceful else "SIGKILL"
        print(f"{how}; lease {args.lease}, renew deadline {args.renew}, retry {args.retry}")
        print(failover.summary(outcome, args.grants))
        checks: dict[str, Any] = {
            "transitions recorded twice": failover.duplicated_records(outcome),
            "Events posted twice": failover.duplicated_events(outcome),
            "devices held by two grants": failover.devices_held_twice(outcome),
            "overlapping reservations": failover.reservations_overlapping(outcome),
            "transitions not recorded": failover.missing_records(outcome),
        }
        for name, found in checks.items():
            print(f"{name}: {len(found)}" + (f" e.g. {list(found)[:3]}" if found else ""))
        failed = any(checks[name] for name in list(checks)[:4])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
