"""The cost between steps in ``eva run``: model loads and loading time, cold vs warm (not a test).

The same tiny-model run (two iterations, creator on, the tests' tiny Llama and a python
reward) runs twice in this process, after a discarded run that pays the imports: cold
(``warm=False``: every step loads what it needs, as before warm models) and warm (the
default). Each step's ``_SUCCESS.json`` records its
model loads and its seconds per part (eva_runtime.timing); the figures are read from there.

Figures, per iteration and in total, warm beside cold, as ratios of the same run:
  loads        models loaded (policy generators, reward model, evolver, trainer)
  load s       seconds in loading and unloading models (unloading: freeing memory, which
               costs a garbage collection each time)
  work s       seconds generating, scoring, evolving, training
  wall s       the run's wall time
Both runs write the same bytes (the digests are compared; a mismatch exits 1).

    .venv/bin/python benchmarks/step_overhead.py [--iterations 2] [--json PATH]

On the tiny model loading is cheap next to a 9B policy's; the load counts carry over to any
size, the seconds do not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eva_runtime.artifacts import RunDir
from eva_runtime.runner import run_all
from eva_runtime.spec import iteration_steps, load_run
from tiny_model import build_tiny_model
from tiny_run import tiny_manifest

WORK_PARTS = ("generate", "score", "evolve", "train")


def _per_iteration(run_dir: Path, steps: tuple[str, ...], iterations: int) -> list[dict[str, Any]]:
    rd = RunDir(run_dir)
    out = []
    for t in range(iterations):
        timings = [rd.step(t, s).summary()["timings"] for s in steps]
        out.append(
            {
                "loads": sum(int(x.get("loads", 0)) for x in timings),
                "load_s": round(
                    sum(x["phases"]["load"] + x["phases"]["unload"] for x in timings), 3
                ),
                "work_s": round(sum(x["phases"][p] for x in timings for p in WORK_PARTS), 3),
                "seconds": round(sum(x["seconds"] for x in timings), 3),
            }
        )
    return out


def _digests(run_dir: Path) -> dict[str, Any]:
    return {
        str(p.relative_to(run_dir)): json.loads(p.read_text())["digests"]
        for p in sorted(run_dir.rglob("_SUCCESS.json"))
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="eva-step-overhead-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "policy")
        manifest = tiny_manifest(root, model, name="overhead", spec={"iterations": args.iterations})
        run = load_run(manifest)
        steps = tuple(iteration_steps(run.spec))
        figures: dict[str, Any] = {}
        dirs = {}
        # A discarded run first: the first model load in a process also pays for importing
        # torch, transformers and TRL, which would be charged to whichever mode ran first.
        warmup = tiny_manifest(root, model, name="warmup", spec={"iterations": 1})
        run_all(load_run(warmup), root / "warmup", tracking=False, warm=False)
        for mode in ("cold", "warm"):
            start = time.monotonic()
            result = run_all(run, root / mode, tracking=False, warm=mode == "warm")
            wall = time.monotonic() - start
            dirs[mode] = result.run_dir
            figures[mode] = {
                "iterations": _per_iteration(result.run_dir, steps, args.iterations),
                "wall_s": round(wall, 2),
            }
        same = _digests(dirs["cold"]) == _digests(dirs["warm"])
    for mode in ("cold", "warm"):
        its = figures[mode]["iterations"]
        figures[mode]["total"] = {k: round(sum(i[k] for i in its), 3) for k in its[0]}
    cold, warm = figures["cold"]["total"], figures["warm"]["total"]
    figures["ratio_warm_to_cold"] = {
        "loads": round(warm["loads"] / cold["loads"], 3),
        "load_s": round(warm["load_s"] / cold["load_s"], 3) if cold["load_s"] else None,
        "wall_s": round(figures["warm"]["wall_s"] / figures["cold"]["wall_s"], 3),
    }
    figures["same_bytes"] = same
    print(f"{'':6} {'iter':>4} {'loads':>6} {'load s':>8} {'work s':>8} {'step s':>8}")
    # load s: loading and unloading; work s: generating, scoring, evolving, training
    for mode in ("cold", "warm"):
        for t, i in enumerate(figures[mode]["iterations"]):
            print(
                f"{mode:6} {t:>4} {i['loads']:>6} {i['load_s']:>8.2f} {i['work_s']:>8.2f} "
                f"{i['seconds']:>8.2f}"
            )
    r = figures["ratio_warm_to_cold"]
    print(
        f"warm / cold: loads {r['loads']:.2f}, (un)loading seconds {r['load_s']}, "
        f"wall {r['wall_s']:.2f}; same bytes: {same}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
