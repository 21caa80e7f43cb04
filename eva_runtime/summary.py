"""A run's per-iteration summary, read from its run directory: the rows the runner prints at
the end of ``eva run`` (and ``eva summary`` prints) and the HTML report tabulates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eva_runtime.artifacts import RunDir
from eva_runtime.progress import console
from eva_runtime.status import HEAD_TO_HEAD, bench_results

# (key of a summary row, column title): the runner's table and the HTML report share them.
SUMMARY_COLUMNS = [
    ("iteration", "iter"),
    ("prompts", "prompts"),
    ("kept", "kept"),
    ("evolved", "evolved"),
    ("reward_mean", "mean reward"),
    ("gap_mean", "mean gap"),
    ("pairs", "pairs"),
    ("train_loss", "train loss"),
    ("heldout_before", "held-out before"),
    ("heldout_after", "held-out after"),
    ("win_rate", "win rate"),
]


def summary_rows(rd: RunDir, iterations: int) -> list[dict[str, Any]]:
    """One row per iteration from the step markers (missing steps give None)."""

    def counts(t: int, step: str) -> dict[str, Any]:
        sd = rd.step(t, step)
        return sd.summary()["counts"] if sd.complete() else {}

    rows = []
    for t in range(iterations):
        gen, create, train, ev = (counts(t, s) for s in ("generate", "create", "train", "evaluate"))
        if not gen:
            break
        rows.append(
            {
                "iteration": t,
                "prompts": gen.get("prompts"),
                "kept": create.get("selected"),
                "evolved": create.get("evolved"),
                "reward_mean": gen.get("reward_mean"),
                "gap_mean": gen.get("reward_gap_mean"),
                "pairs": train.get("pairs"),
                "train_loss": train.get("train_loss"),
                "heldout_before": ev.get("reward_previous"),
                "heldout_after": ev.get("reward_new"),
                "win_rate": ev.get("win_rate"),
                "head_to_head": _head_to_head(rd, t),
                "benchmarks": bench_results(counts(t, "benchmark")),
            }
        )
    return rows


def _head_to_head(rd: RunDir, t: int) -> bool:
    """Whether iteration t's evaluation compared the policies directly (a pairwise reward)."""
    sd = rd.step(t, "evaluate")
    return sd.complete() and sd.summary().get("comparison") == HEAD_TO_HEAD


# What a run spent, per iteration: (key, title, (step, counts key) summed). Runs are compared
# at equal compute by these (``eva sweep report``); evaluation is the same work for every
# cell of a sweep, so it is counted apart from what the loop spent to train.
SPEND_FIELDS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "generated_responses",
        "responses generated",
        (("generate", "responses"), ("generate-evolved", "responses")),
    ),
    (
        "generated_tokens",
        "tokens generated",
        (("generate", "tokens"), ("generate-evolved", "tokens"), ("create", "evolve_tokens")),
    ),
    ("evolve_requests", "evolver requests", (("create", "evolve_requests"),)),
    ("pairs", "pairs trained", (("train", "pairs"),)),
    ("train_tokens", "training tokens", (("train", "train_tokens"),)),
    ("train_steps", "optimizer steps", (("train", "steps"),)),
    ("eval_tokens", "evaluation tokens", (("evaluate", "tokens"),)),
    ("bench_tokens", "benchmark answer tokens", (("benchmark", "tokens"),)),
)


def spend(rd: RunDir, iterations: int) -> list[dict[str, Any]]:
    """What each complete iteration spent: the SPEND_FIELDS and wall seconds per step.

    An iteration is listed once its train step is complete (what it spent to train is known);
    steps recorded before a field existed count it as 0.
    """
    from eva_runtime.spec import ALL_STEPS

    out = []
    for t in range(iterations):
        if not rd.step(t, "train").complete():
            break
        summaries = {
            s: rd.step(t, s).summary()
            for s in ALL_STEPS
            if s != "prepare" and rd.step(t, s).complete()
        }
        row: dict[str, Any] = {"iteration": t}
        for key, _title, parts in SPEND_FIELDS:
            row[key] = sum(
                int(summaries[s]["counts"].get(k) or 0) for s, k in parts if s in summaries
            )
        row["seconds"] = {
            s: float(m.get("timings", {}).get("seconds", 0.0)) for s, m in summaries.items()
        }
        out.append(row)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_summary(rows: list[dict[str, Any]], path: Path) -> None:
    from rich.table import Table

    table = Table(title="eva run summary")
    # The terminal is narrow: the held-out curve is printed below the table instead.
    headers = [c for c in SUMMARY_COLUMNS if c[0] != "heldout_before"]
    for _, title in headers:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*(_fmt(r[k]) for k, _ in headers))
    console.print(table)
    if rows and rows[0].get("head_to_head"):
        # Each value is P(new beats previous): a chain of duels, not a curve on one scale.
        console.print(
            "held-out, head to head (P new policy beats the previous one): "
            + "  ".join(f"iter {r['iteration']} {_fmt(r['win_rate'])}" for r in rows)
        )
    elif rows and rows[0]["heldout_before"] is not None:
        curve = [rows[0]["heldout_before"]] + [r["heldout_after"] for r in rows]
        labels = ["base"] + [f"iter {r['iteration']}" for r in rows]
        console.print(
            "held-out reward: "
            + "  ".join(f"{lab} {_fmt(v)}" for lab, v in zip(labels, curve, strict=True))
        )
    names = sorted({n for r in rows for n in (r.get("benchmarks") or {})})
    for name in names:
        points = []
        first = (rows[0].get("benchmarks") or {}).get(name, {})
        if first.get("base_score") is not None:
            points.append(
                ("base", first["base_score"], first.get("base_ci_low"), first.get("base_ci_high"))
            )
        for r in rows:
            b = (r.get("benchmarks") or {}).get(name)
            if b:
                points.append(
                    (f"iter {r['iteration']}", b.get("score"), b.get("ci_low"), b.get("ci_high"))
                )
        console.print(
            f"bench {name}: " + "  ".join(f"{lab} {_score(v, lo, hi)}" for lab, v, lo, hi in points)
        )
    console.print(f"artifacts: {path}")


def _score(value: Any, low: Any, high: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"
    return f"{value:.2f}"
