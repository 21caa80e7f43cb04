"""A run's per-iteration summary, read from its run directory: the rows the runner prints at
the end of ``eva run`` (and ``eva summary`` prints) and the HTML report tabulates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eva_runtime.artifacts import RunDir
from eva_runtime.progress import console

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
            }
        )
    return rows


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
    if rows and rows[0]["heldout_before"] is not None:
        curve = [rows[0]["heldout_before"]] + [r["heldout_after"] for r in rows]
        labels = ["base"] + [f"iter {r['iteration']}" for r in rows]
        console.print(
            "held-out reward: "
            + "  ".join(f"{lab} {_fmt(v)}" for lab, v in zip(labels, curve, strict=True))
        )
    console.print(f"artifacts: {path}")
