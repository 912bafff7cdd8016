"""A longer random search than the test suite's: the optimizer against brute force, every objective.

    .venv/bin/python -m tests.fuzz_optimizer --seconds 240

Draws problems from the strategies of ``tests/test_solve.py`` (random layer figures, the seed's
dict or the general form, both memory rules, tied weights) and checks, for each objective, that
``PartitionOptimizer().optimize`` finds a plan exactly when one fits, with the brute-force
optimum's value (or the same plan). Prints each mismatch with the problem that reproduces it,
then a count; exits 1 if any. Not collected by pytest (it runs for minutes).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings

from rotafx import InfeasibleError, PartitionOptimizer
from rotafx.solve.brute_force import solve_brute_force
from rotafx.objective import GENERATION_OBJECTIVES, OBJECTIVES
from tests.test_solve import PROBLEMS, brute_objective, close, magnification


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # .example() outside a test, and the optimizer's own warnings
    rng = random.Random(args.seed)
    t0, checked, bad = time.monotonic(), 0, 0
    while time.monotonic() - t0 < args.seconds:
        problem = PROBLEMS[rng.choice(["seed", "general"])].example()
        opt = PartitionOptimizer(memory_rule=problem.memory_rule)
        for name in (o for o in OBJECTIVES if o not in GENERATION_OBJECTIVES):
            ref = brute_objective(problem.tables, name, None)
            stages, best = solve_brute_force(problem.tables, ref)
            try:
                part = opt.optimize(problem.profile, problem.topology, name)
            except InfeasibleError:
                if stages is not None:
                    bad += 1
                    print(f"INFEASIBLE {name}: brute force found {stages} worth {best[0]}\n  {problem!r}", flush=True)
                continue
            checked += 1
            same = stages is not None and (tuple(stages) == part.stages
                                           or close(part.objective_value, best[0], magnification(ref)))
            if not same:
                bad += 1
                print(f"MISMATCH {name}: optimizer {part.stages} worth {part.objective_value} ({part.status}), "
                      f"brute force {stages} worth {best[0]}\n  {problem!r}", flush=True)
    print(f"checked {checked} optimizations in {time.monotonic() - t0:.0f} s, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
