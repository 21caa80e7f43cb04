"""``eva sweep report DIR``: one HTML page, a Markdown table and a CSV of a sweep.

The numbers come from :func:`eva_runtime.sweep.summarise` (pure); this module only lays
them out. The page is self-contained like the run report (figures inline, nothing fetched)
and every text taken from the sweep is escaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eva_runtime.artifacts import write_output
from eva_runtime.report.figures import COLORS, _figs, _figure, _img, _style
from eva_runtime.report.markup import (
    _e,
    _missing,
    _mpl_text,
    _num,
    _page,
    _section,
    _table,
)
from eva_runtime.summary import SPEND_FIELDS
from eva_runtime.sweep import collect, equal_compute, summarise

METRIC = "heldout_reward"


def write_sweep_report(
    sweep_dir: str | Path, out: str | Path | None = None, *, reference: str | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """Write DIR/sweep-report.html (or ``out``) with .md and .csv beside it; the summary."""
    root = Path(sweep_dir)
    definition, cells = collect(root)
    summary = summarise(definition, cells, reference)
    target = Path(out) if out is not None else root / "sweep-report.html"
    with _style():
        body = "".join(
            [
                _header(summary, root),
                _cells_section(summary),
                _curves_section(summary),
                _paired_section(summary),
                _bench_section(summary),
                _compute_section(summary),
                _per_seed_section(summary),
            ]
        )
    page = _page(f"eva sweep: {summary['sweep']}", body)
    md, table_csv = target.with_suffix(".md"), target.with_suffix(".csv")
    write_output(target, page.encode("utf-8", errors="replace"))
    write_output(md, markdown_table(summary).encode())
    write_output(table_csv, csv_table(summary).encode())
    return summary, [target, md, table_csv]


# --------------------------------------------------------------------------- text forms


def _pm(stats: Mapping[str, Any], digits: int = 3) -> str:
    if stats.get("mean") is None:
        return "–"
    sem = stats.get("sem")
    return f"{stats['mean']:.{digits}f}" + (f" ± {sem:.{digits}f}" if sem is not None else "")


def _diff_text(vs: Mapping[str, Any] | None, digits: int = 3) -> tuple[str, str, str]:
    """(difference ± s.e., 95% interval, verdict) of a cell against the reference."""
    if not vs:
        return "(reference)", "", ""
    ci = vs.get("ci95")
    interval = f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else "–"
    mean = vs.get("mean")
    diff = "–" if mean is None else f"{mean:+.{digits}f}"
    if mean is not None and vs.get("sem") is not None:
        diff += f" ± {vs['sem']:.{digits}f}"
    if not vs["seeds"]:
        return "–", "–", "no seed finished in both cells yet"
    verdict = vs["verdict"] + f" (higher on {vs['higher_on']}/{len(vs['seeds'])} seeds)"
    return diff, interval, verdict


def _mean_win(vs: Mapping[str, Any] | None) -> float | None:
    rates = [r for r in ((vs or {}).get("win_rate") or {}).values() if r is not None]
    return sum(rates) / len(rates) if rates else None


def _ratio(cell: Mapping[str, Any], key: str) -> str:
    r = cell.get("spend_ratio", {}).get(key)
    return "–" if r is None else f"{r:.2f}×"


TABLE_HEADERS = (
    "cell",
    "seeds",
    "held-out reward (newest)",
    "gain over base",
    "vs reference",
    "95% interval",
    "verdict",
    "win rate vs reference",
    "tokens generated",
    "training tokens",
)


def _rows(summary: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for c in summary["cells"]:
        diff, interval, verdict = _diff_text(c.get("vs_reference"))
        win = _mean_win(c.get("vs_reference"))
        rows.append(
            [
                c["name"],
                str(len(c["seeds"])),
                _pm(c[METRIC]),
                _pm(c["heldout_gain"]),
                diff,
                interval,
                verdict,
                "–" if win is None else f"{win:.3f}",
                _ratio(c, "generated_tokens"),
                _ratio(c, "train_tokens"),
            ]
        )
    return rows


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The cells table for papers and READMEs (mean ± standard error over seeds)."""
    lines = [
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADERS) + "|",
    ]
    for row in _rows(summary):
        lines.append("| " + " | ".join(x.replace("|", "\\|") or " " for x in row) + " |")
    lines.append("")
    lines.append(
        f"Reference: `{summary['reference']}`. Mean ± standard error over seeds; the interval is "
        "a 95% bootstrap interval of the paired per-seed difference; spend relative to the "
        "reference."
    )
    return "\n".join(lines) + "\n"


def csv_table(summary: Mapping[str, Any]) -> str:
    """One row per cell and seed: the held-out curve's ends and what the run spent."""
    buf = io.StringIO()
    spend_keys = [k for k, _t, _p in SPEND_FIELDS] + ["seconds"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cell", "seed", "heldout_base", "heldout_reward", "iterations", *spend_keys])
    for c in summary["cells"]:
        for seed, r in c["per_seed"].items():
            curve = r["heldout"]
            w.writerow(
                [
                    c["name"],
                    seed,
                    curve[0] if curve else "",
                    curve[-1] if curve else "",
                    max(len(curve) - 1, 0),
                    *(r["spend"].get(k, "") for k in spend_keys),
                ]
            )
    return buf.getvalue()


# --------------------------------------------------------------------------- sections


def _header(summary: Mapping[str, Any], root: Path) -> str:
    cells = summary["cells"]
    seeds = sorted({int(s) for c in cells for s in c["per_seed"]})
    unfinished = [f"{c['name']} seed {s}" for c in cells for s in c["unfinished_seeds"]]
    note = (
        _missing(
            "Not finished (left out of the statistics until they evaluate every iteration): "
            + ", ".join(unfinished)
        )
        if unfinished
        else ""
    )
    return (
        f'<header class="top" id="header"><h1>eva sweep {_e(summary["sweep"])}</h1>'
        f'<div class="sub">{_e(root.resolve())}</div>'
        f"<p>{len(cells)} cells × seeds {_e(', '.join(map(str, seeds)) or 'none yet')}; "
        f"reference cell <strong>{_e(summary['reference'])}</strong>.</p>{note}</header>"
    )


def _bench_section(summary: Mapping[str, Any]) -> str:
    """Independent judged benchmarks of the newest policy, per cell, paired like the
    held-out reward (empty when the runs have none)."""
    rows = []
    for c in summary["cells"]:
        for name, b in sorted((c.get("benchmarks") or {}).items()):
            diff, interval, verdict = _diff_text(b.get("vs_reference"), 2)
            rows.append(
                [
                    _e(c["name"]),
                    _e(name),
                    _e(_pm(b["score"], 2)),
                    _e(diff),
                    _e(interval),
                    _e(verdict),
                ]
            )
    if not rows:
        return ""
    text = (
        '<p class="note">Scores of <code>evaluation.benchmarks</code> for the newest policy '
        "(judged by a model the policies were not trained against), mean ± standard error over "
        "seeds, and the difference with the reference cell paired by seed.</p>"
    )
    headers = ("cell", "benchmark", "score", "vs reference", "95% interval", "verdict")
    return _section(
        "benchmarks", "Independent benchmarks", text + _table(headers, rows, text={0, 1, 5})
    )


def _cells_section(summary: Mapping[str, Any]) -> str:
    rows = [[_e(x) for x in r] for r in _rows(summary)]
    notes = []
    for c in summary["cells"]:
        off = equal_compute(c.get("spend_ratio", {}))
        if off and not c["reference"]:
            notes.append(
                f"{c['name']}: not at equal compute with the reference ("
                + ", ".join(f"{k} {_ratio(c, k)}" for k in off)
                + ")"
            )
    text = (
        '<p class="note">Held-out reward of the newest policy, mean ± standard error over '
        "seeds. The difference is paired by seed (each seed draws the same held-out prompts "
        "and sampling seeds in every cell); <em>within noise</em> means its 95% bootstrap "
        "interval contains 0. Win rate: how often the cell's newest policy beats the "
        "reference's on the same held-out (prompt, sample), averaged over seeds.</p>"
    )
    extra = "".join(_missing(n) for n in notes)
    return _section("cells", "Cells", text + _table(TABLE_HEADERS, rows, text={0, 6}) + extra)


def _curves_section(summary: Mapping[str, Any]) -> str:
    fig, ax = _figure()
    drawn = 0
    labels: list[str] = []
    for i, c in enumerate(summary["cells"]):
        its = [it for it in c["iterations"] if it[METRIC]["mean"] is not None]
        if not its:
            continue
        drawn += 1
        if len(its) > len(labels):
            labels = [it["policy"] for it in its]
        xs = np.arange(len(its)) + (i - (len(summary["cells"]) - 1) / 2) * 0.05
        ax.errorbar(
            xs,
            [it[METRIC]["mean"] for it in its],
            yerr=[it[METRIC]["sem"] or 0.0 for it in its],
            marker="o",
            capsize=3,
            color=COLORS[i % len(COLORS)],
            label=_mpl_text(c["name"]),
        )
    if not drawn:
        return _section("curves", "Held-out reward", _missing("No run has been evaluated yet."))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_title("Held-out reward by iteration (mean ± s.e. over seeds)")
    ax.set_ylabel("held-out reward")
    ax.legend(loc="best")
    rows = []
    for c in summary["cells"]:
        rows.append([_e(c["name"])] + [_e(_pm(it[METRIC])) for it in c["iterations"]])
    width = max((len(r) for r in rows), default=1)
    headers = ["cell", *(labels + [""] * width)[: width - 1]]
    rows = [r + [""] * (width - len(r)) for r in rows]
    return _section(
        "curves",
        "Held-out reward by iteration",
        _figs(_img(fig, "held-out reward by iteration")) + _table(headers, rows, text={0}),
    )


def _paired_section(summary: Mapping[str, Any]) -> str:
    others = [
        c
        for c in summary["cells"]
        if not c["reference"] and c.get("vs_reference") and c["vs_reference"]["seeds"]
    ]
    if not others:
        return _section(
            "paired",
            "Paired differences",
            _missing("No cell has a seed finished in it and in the reference yet."),
        )
    fig, ax = _figure()
    for i, c in enumerate(others):
        vs = c["vs_reference"]
        ax.scatter([i] * len(vs["diffs"]), vs["diffs"], color=COLORS[(i + 1) % len(COLORS)])
        if vs.get("ci95"):
            lo, hi = vs["ci95"]
            ax.errorbar(
                [i + 0.15],
                [vs["mean"]],
                yerr=[[vs["mean"] - lo], [hi - vs["mean"]]],
                fmt="D",
                color="#333",
                capsize=4,
            )
    ax.axhline(0.0, color="#555", linestyle="--", linewidth=1)
    ax.set_xlim(-0.5, len(others) - 0.5)
    ax.set_xticks(range(len(others)))
    ax.set_xticklabels([_mpl_text(c["name"], 28) for c in others], rotation=10)
    ax.set_title(f"Per-seed difference vs {_mpl_text(summary['reference'], 30)} (95% CI)")
    ax.set_ylabel("held-out reward difference")
    rows = []
    for c in others:
        vs = c["vs_reference"]
        for s, d in zip(vs["seeds"], vs["diffs"], strict=True):
            win = vs["win_rate"].get(str(s))
            rows.append([_e(c["name"]), str(s), f"{d:+.4f}", _num(win, 3)])
    return _section(
        "paired",
        "Paired differences with the reference, per seed",
        _figs(_img(fig, "paired differences"))
        + _table(["cell", "seed", "difference", "win rate"], rows, text={0}),
    )


def _compute_section(summary: Mapping[str, Any]) -> str:
    fig, ax = _figure()
    drawn = 0
    for i, c in enumerate(summary["cells"]):
        xs_all: list[list[float]] = []
        ys_all: list[list[float]] = []
        for r in c["per_seed"].values():
            if not r["heldout"]:
                continue
            xs, ys = [0.0], [r["heldout"][0]]
            total = 0.0
            for k, row in enumerate(r.get("iterations_spend") or []):
                if k + 1 >= len(r["heldout"]):
                    break
                total += row
                xs.append(total)
                ys.append(r["heldout"][k + 1])
            xs_all.append(xs)
            ys_all.append(ys)
        if not xs_all:
            continue
        drawn += 1
        depth = min(len(x) for x in xs_all)
        mx = [float(np.mean([x[k] for x in xs_all])) for k in range(depth)]
        my = [float(np.mean([y[k] for y in ys_all])) for k in range(depth)]
        ax.plot(mx, my, marker="o", color=COLORS[i % len(COLORS)], label=_mpl_text(c["name"]))
    if drawn:
        ax.set_title("Held-out reward against compute spent (mean over seeds)")
        ax.set_xlabel("tokens generated + trained on (cumulative)")
        ax.set_ylabel("held-out reward")
        ax.legend(loc="best")
    keys = [(k, t) for k, t, _p in SPEND_FIELDS] + [("seconds", "wall seconds")]
    rows = []
    for c in summary["cells"]:
        rows.append(
            [_e(c["name"])] + [_num(c["spend"].get(k), 0) + f" ({_ratio(c, k)})" for k, _t in keys]
        )
    body = (
        '<p class="note">What each cell spent, mean over its seeds (ratio to the reference). '
        "Training-side tokens are the policy's responses, the evolver's replies and the "
        "pairs' tokens under the chat template; evaluation is counted apart.</p>"
    )
    figs = _figs(_img(fig, "held-out reward against compute")) if drawn else ""
    return _section(
        "compute",
        "Compute",
        body + figs + _table(["cell", *(t for _k, t in keys)], rows, text={0}),
    )


def _per_seed_section(summary: Mapping[str, Any]) -> str:
    rows = []
    for c in summary["cells"]:
        for seed, r in c["per_seed"].items():
            rows.append(
                [_e(c["name"]), _e(seed), _e("  →  ".join(f"{v:.4f}" for v in r["heldout"]))]
            )
    return _section(
        "seeds",
        "Every run",
        _table(["cell", "seed", "held-out reward: base → each iteration"], rows, text={0, 2}),
    )
