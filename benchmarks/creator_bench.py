"""Creator and pair-building speed over 1,000,000 prompts x 6 rewards (not a test).

Each time is printed beside a plain numpy pass over the same array (max - min along the
responses), measured in the same run, as a ratio. Targets: informativeness + sampling
within 3x of that pass; both steps under 5 s on a 2-core machine.

    .venv/bin/python benchmarks/creator_bench.py [--prompts N] [--responses K] [--repeat R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from eva_runtime.creator import informativeness, sample_prompts
from eva_runtime.solver import preference_pairs


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--responses", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.25)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(args.prompts, args.responses))

    baseline = best_of(lambda: rewards.max(axis=1) - rewards.min(axis=1), args.repeat)
    rows = [("numpy max - min (baseline)", baseline)]
    scores = informativeness(rewards, "gap")
    for metric in ("gap", "variance", "dts"):
        rows.append(
            (
                f"informativeness {metric}",
                best_of(lambda m=metric: informativeness(rewards, m), args.repeat),
            )
        )
    for method in ("importanceWeighted", "greedy", "stratified"):
        rows.append(
            (
                f"sample_prompts {method}",
                best_of(
                    lambda m=method: sample_prompts(scores, args.fraction, m, seed=1), args.repeat
                ),
            )
        )
    both = best_of(
        lambda: sample_prompts(informativeness(rewards, "gap"), args.fraction, seed=1), args.repeat
    )
    rows.append(("informativeness gap + importanceWeighted", both))
    pairs = best_of(lambda: preference_pairs(rewards), args.repeat)
    rows.append(("preference_pairs", pairs))

    print(f"{args.prompts:,} prompts x {args.responses} rewards, best of {args.repeat}")
    print(f"{'step':44s} {'seconds':>9s} {'x baseline':>11s}")
    for name, secs in rows:
        print(f"{name:44s} {secs:9.4f} {secs / baseline:11.2f}")
    ok_ratio = both / baseline <= 3.0
    ok_abs = both < 5.0 and pairs < 5.0
    print(
        f"targets: informativeness+sampling <= 3x baseline: {'met' if ok_ratio else 'MISSED'}; "
        f"both steps < 5 s: {'met' if ok_abs else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
