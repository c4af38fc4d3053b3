"""Chaos at full size (issue 12, item 7): grant churn while the operator, apiserver and agent fail.

Starts its own local control plane, a real agent with its own dockerd on a
fake GPU node (root, cgroup v1 device control, docker.io, busybox-static and
gcc needed, as for `ds01 dev up`'s agent), two operator replicas, and runs the
scenario of `tests/chaos/scenario.py`: the churn of ``--grants`` grants (create,
approve, deny, revoke, delete, short windows that expire) paced over the faults;
``--operator-kills`` SIGKILLs of an operator replica at random moments; the
apiserver stopped for ``--apiserver-outage`` with the agent killed and restarted
while it is down; ``--agent-kills`` agent SIGKILLs in all; containers holding GPUs
throughout. Prints each fault as it happens, then the numbers and every check.
Not a test: it asserts nothing; exit status 1 if a check failed. The CI tier
(`tests/chaos/test_chaos.py`) runs the same at 150 grants, 4 kills, a 20 s outage.

    python -m benchmarks.chaos [--grants 1000] [--operator-kills 100]
        [--apiserver-outage 5m] [--agent-kills 5] [--users 50] [--holders 2]
        [--churn-seconds N] [--seed N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from controller.cli.options import duration
from controller.devcluster import agentnode
from tests.chaos import scenario
from tests.chaos.plan import Sizes, make_plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--operator-kills", type=int, default=100)
    parser.add_argument(
        "--apiserver-outage", type=duration, default="5m", help="how long the apiserver is down"
    )
    parser.add_argument("--agent-kills", type=int, default=5)
    parser.add_argument("--holders", type=int, default=2)
    parser.add_argument(
        "--churn-seconds",
        type=float,
        help="pace the churn over this long (default: room for every fault)",
    )
    parser.add_argument("--seed", type=int, help="replay a run (default: a random seed, printed)")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep its logs")
    args = parser.parse_args()
    if unmet := agentnode.unmet_requirements():
        print(f"cannot run the agent's node here: needs {'; '.join(unmet)}", file=sys.stderr)
        return 2
    sizes = Sizes(
        grants=args.grants,
        users=args.users,
        operator_kills=args.operator_kills,
        outage_s=args.apiserver_outage.total_seconds(),
        agent_kills=args.agent_kills,
        holders=args.holders,
        churn_s=args.churn_seconds,
    )
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    plan = make_plan(seed, sizes)
    print(f"chaos: seed {seed} (--seed {seed} replays it); {sizes}; churn over {plan.churn_s:.0f}s")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ds01-chaos-"))
    outcome = scenario.run(workdir, plan)
    print(json.dumps(scenario.summary(outcome), indent=2))
    for name, found in outcome.problems.items():
        print(f"{name}: {len(found)}" + (f" e.g. {found[:3]}" if found else ""))
    return 1 if outcome.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
