"""The report of one run (``eva report``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_output
from eva_runtime.report.figures import (
    COLORS,
    FIG_H,
    _figs,
    _figure,
    _img,
    _int_ticks,
    _int_x,
    _int_y,
    _nan,
    _style,
)
from eva_runtime.report.markup import (
    TEXT_LIMIT,
    _clean,
    _curve_text,
    _e,
    _missing,
    _mpl_text,
    _num,
    _page,
    _pct,
    _prompt_cell,
    _section,
    _table,
)
from eva_runtime.report.rundata import BASELINE_NOTE, _get, _is_dpo, _Run
from eva_runtime.timing import STEP_PARTS

EXAMPLE_PARENTS = 5  # example evolutions shown per iteration
TOP_SEEDS = 25  # seed prompts shown in the descendants chart


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of one run; return its path (default ``<run_dir>/report.html``)."""
    run = _Run(run_dir)
    target = Path(out) if out is not None else run.path / "report.html"
    with _style():
        body = "".join(
            [
                _header(run),
                _summary_section(run),
                _reward_section(run),
                _heldout_section(run),
                _bench_section(run),
                _informativeness_section(run),
                _lineage_section(run),
                _evolutions_section(run),
                _loss_section(run),
            ]
        )
    page = _page(f"eva report: {run.label}", body)
    return write_output(target, page.encode("utf-8", errors="replace"))


def _spec_items(run: _Run) -> list[tuple[str, str]]:
    s = run.spec
    reward = _get(s, "rewardModel", "type", default="?")
    reward_ref = _get(s, "rewardModel", "model") or _get(s, "rewardModel", "function")
    source = _get(s, "prompts", "source")
    items = [
        ("iterations", f"{len(run.iterations)} present of {run.planned or '?'} planned"),
        ("seed", _get(s, "seed")),
        ("policy", _get(s, "policy", "model")),
        ("reward", f"{reward}: {reward_ref}" if reward_ref else reward),
        (
            "prompts",
            f"{Path(str(source)).name if source else '?'}, "
            f"held out {_get(s, 'prompts', 'heldOut', default=0)}",
        ),
        (
            "generation",
            f"{_get(s, 'generation', 'samplesPerPrompt')} samples/prompt, "
            f"≤ {_get(s, 'generation', 'maxNewTokens')} tokens, "
            f"T {_get(s, 'generation', 'temperature')}",
        ),
        (
            "solver",
            f"{_get(s, 'solver', 'algorithm')}, β {_get(s, 'solver', 'beta')}, "
            f"lr {_get(s, 'solver', 'learningRate')}, "
            f"{_get(s, 'solver', 'epochs')} epochs",
        ),
    ]
    if run.creator:
        c = _get(s, "creator", default={}) or {}
        items.append(
            (
                "creator",
                f"{_get(c, 'informativeness')} · {_get(c, 'sampling')} · "
                f"fraction {_get(c, 'sampleFraction')} · "
                f"{_get(c, 'evolve', 'variantsPerPrompt')} variants "
                f"({_get(c, 'evolve', 'method')}, evolver "
                f"{_get(c, 'evolve', 'evolver', 'type')}) · "
                f"buffer {_get(c, 'bufferRatio')}",
            )
        )
    else:
        items.append(("creator", BASELINE_NOTE))
    return [(k, "–" if v is None else str(v)) for k, v in items]


def _status(run: _Run) -> str:
    missing = run.missing()
    if not run.has_manifest:
        missing = [
            "evarun.yaml (missing or unreadable: planned iterations and steps guessed)",
            *missing,
        ]
    if not missing:
        n = len(run.iterations)
        return (
            f'<div id="status" class="ok">Complete: every step of {n} '
            f"iteration{'s' * (n != 1)} has its _SUCCESS.json.</div>"
        )
    items = "".join(f"<li>{_e(m)}</li>" for m in missing)
    return (
        '<div id="status" class="missing"><strong>Incomplete run</strong> — the report shows '
        f"what exists. Missing ({len(missing)}):<ul>{items}</ul></div>"
    )


def _header(run: _Run) -> str:
    algo = str(_get(run.spec, "solver", "algorithm", default="preference")).upper()
    kind = "eva" if run.creator else f"baseline (iterative {algo} on fixed prompts)"
    spec = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v, 200)}</dd>" for k, v in _spec_items(run))
    return (
        f'<header class="top" id="header"><h1>eva run report: {_e(run.name)}</h1>'
        f'<div class="sub">namespace <strong>{_e(run.namespace)}</strong> · {_e(kind)} · '
        f"{_e(run.path)}</div>"
        f'<dl class="spec">{spec}</dl>{_status(run)}</header>'
    )


def _summary_section(run: _Run) -> str:
    if not run.rows:
        return _section(
            "summary",
            "Summary",
            run.no_data("generate"),
        )
    from eva_runtime.summary import SUMMARY_COLUMNS

    cols = SUMMARY_COLUMNS
    if not run.creator:
        cols = [c for c in cols if c[0] not in ("kept", "evolved")]
    rows = [[_num(r.get(k)) for k, _ in cols] for r in run.rows]
    parts = [_table([h for _, h in cols], rows)]
    curve = run.heldout_curve()
    if curve:
        base, last = curve[0][1], curve[-1][1]
        parts.append(
            f'<p class="curve"><strong>Held-out reward:</strong> {_curve_text(curve)} '
            f"(change from base {last - base:+.4f})</p>"
        )
    else:
        parts.append(_missing("No held-out evaluation yet (missing iter-0/evaluate)."))
    if not run.creator:
        parts.append(f'<p class="note">Kept / evolved: {BASELINE_NOTE}.</p>')
    timing_rows = []
    for t in run.iterations:
        secs = [run.seconds(t, s) for s in run.steps]
        total = sum(v for v in secs if v is not None)
        timing_rows.append([str(t), *(_num(v, 1) for v in secs), _num(total, 1)])
    parts.append("<h3>Step times (seconds)</h3>")
    parts.append(_table(["iter", *run.steps, "total"], timing_rows))
    parts.append(_time_parts_figure(run))
    return _section("summary", "Summary", "".join(parts))


def _time_parts_figure(run: _Run) -> str:
    """A stacked bar per step and iteration: where the step's time went (eva_runtime.timing)."""
    bars = [
        (f"{t}/{s}", p)
        for t in run.iterations
        for s in run.steps
        if (p := run.time_parts(t, s)) is not None
    ]
    if not bars:
        return ""
    fig, ax = _figure(height=max(FIG_H, 0.28 * len(bars) + 1.2))
    left = [0.0] * len(bars)
    for k, part in enumerate(STEP_PARTS):
        widths = [float(p.get(part, 0.0)) for _, p in bars]
        if not any(widths):
            continue
        color = COLORS[k % len(COLORS)] if part != "other" else "#bbbbbb"
        ax.barh(range(len(bars)), widths, left=left, color=color, label=part, height=0.7)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([label for label, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Where each step's time went")
    ax.legend(loc="lower right", fontsize=8)
    note = (
        '<p class="note">Per step and iteration: model loading, generation, scoring (reward '
        "model or judge), evolving, training, writing (files and their digests); other is "
        "the rest (reading inputs, bookkeeping). A launched (multi-process) training counts "
        "whole as training.</p>"
    )
    return _figs(_img(fig, "step time by part")) + note


def _reward_section(run: _Run) -> str:
    rows = [r for r in run.rows if r.get("reward_mean") is not None]
    if not rows:
        return _section(
            "reward",
            "Reward on the training prompts",
            run.no_data("generate"),
        )
    its = [r["iteration"] for r in rows]
    evolved = [(t, run.counts(t, "generate-evolved")) for t in its] if run.creator else []
    evolved = [(t, c) for t, c in evolved if c.get("reward_mean") is not None]
    images = []
    for key, ekey, title, ylabel in (
        ("reward_mean", "reward_mean", "Mean reward of the policy's samples", "mean reward"),
        ("gap_mean", "reward_gap_mean", "Mean reward gap (best − worst per prompt)", "mean gap"),
    ):
        fig, ax = _figure()
        ax.plot(
            its,
            [_nan(r.get(key)) for r in rows],
            marker="o",
            color=COLORS[0],
            label="prompt set X_t (generate)",
        )
        if evolved:
            ax.plot(
                [t for t, _ in evolved],
                [_nan(c.get(ekey)) for _, c in evolved],
                marker="s",
                color=COLORS[1],
                linestyle="--",
                label="evolved prompts (generate-evolved)",
            )
        _int_ticks(ax, its, "iter ")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
        images.append(_img(fig, title))
    note = (
        '<p class="note">Samples of the policy that starts each iteration, scored by the reward '
        "model. The gap is what the creator's default informativeness measures.</p>"
    )
    if not run.creator:
        note += f'<p class="note">Evolved prompts: {BASELINE_NOTE}.</p>'
    missing = run.missing_for("generate")
    if run.creator:
        missing += run.missing_for("generate-evolved")
    if missing:
        note += _missing("Not yet generated: " + ", ".join(missing))
    return _section("reward", "Reward on the training prompts", note + _figs(*images))


def _heldout_section(run: _Run) -> str:
    curve = run.heldout_curve()
    title = "Held-out reward"
    if not curve:
        return _section(
            "heldout",
            title,
            run.no_data("evaluate"),
        )
    xs = list(range(len(curve)))
    means = [float(c[1]) for c in curve]
    sems = [float(c[2]) if c[2] is not None else 0.0 for c in curve]
    fig, ax = _figure()
    ax.errorbar(
        xs,
        means,
        yerr=sems,
        marker="o",
        color=COLORS[0],
        capsize=3,
        label="mean held-out reward ± s.e.",
    )
    for x, (_label, mean, _sem, win) in zip(xs, curve, strict=True):
        if win is not None:
            ax.annotate(
                f"win {100 * win:.0f}%",
                (x, mean),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                fontsize=8,
                color="#444",
            )
    ax.set_xticks(xs)
    ax.set_xticklabels([c[0] for c in curve])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.margins(y=0.25)
    ax.set_title("Held-out reward: base policy, then after each iteration")
    ax.set_xlabel("policy")
    ax.set_ylabel("mean reward")
    ax.legend(loc="lower right")
    images = [_img(fig, "held-out reward curve")]
    wins = [(c[0], c[3]) for c in curve if c[3] is not None]
    if wins:
        fig, ax = _figure()
        ax.bar(range(len(wins)), [w for _, w in wins], color=COLORS[2], width=0.55)
        ax.axhline(0.5, color="#555", linestyle="--", linewidth=1, label="no change (50%)")
        ax.set_xticks(range(len(wins)))
        ax.set_xticklabels([lab for lab, _ in wins])
        ax.set_xlim(-0.8, len(wins) - 0.2)
        ax.set_ylim(0, 1)
        ax.set_title("Win rate of each new policy vs the previous one")
        ax.set_xlabel("policy after")
        ax.set_ylabel("paired win rate (ties ½)")
        ax.legend(loc="upper left")
        images.append(_img(fig, "held-out win rate"))
    rows = [[_e(label), _num(mean), _num(sem), _pct(win)] for label, mean, sem, win in curve]
    table = _table(["policy", "held-out reward", "s.e.", "win rate vs previous"], rows, text={0})
    missing = run.missing_for("evaluate")
    extra = _missing("Not yet evaluated: " + ", ".join(missing)) if missing else ""
    if run.head_to_head():
        extra = f'<p class="note">{HEAD_TO_HEAD_NOTE}</p>' + extra
    return _section("heldout", title, _figs(*images) + table + extra)


HEAD_TO_HEAD_NOTE = (
    "Pairwise reward: each new policy's answers were compared head to head with the previous "
    "policy's, so an iteration's held-out reward is P(new beats previous) and the one before "
    "it is its complement. The points are a chain of duels, each against its predecessor, "
    "not levels on one scale."
)


BENCH_NOTE = (
    "Scored by a judge model the policy was not trained against (the held-out reward above "
    "is the training reward model's). Arena-hard and alpaca-eval: win rate in % against the "
    "baseline's or the reference's answers; mt-bench: mean 1-10 rating. Intervals: 95% "
    "bootstrap. A small judge's scores say little about quality: read them as a check "
    "that the policy did not merely learn to please its reward model."
)


BIGGEST = 5  # wins and losses shown per benchmark


def _bench_section(run: _Run) -> str:
    title = "Independent benchmarks"
    if not run.benchmarks:
        return ""
    from eva_runtime.phases.benchmark import results

    parts = [f'<p class="note">{_e(BENCH_NOTE)}</p>']
    last = None
    for b in run.benchmarks:
        name = str(b.get("name") or b.get("suite") or "?")
        curve: list[tuple[str, dict[str, Any]]] = []
        base = results(run.path, 0, name, "base")
        if base:
            curve.append(("base", base))
        for t in run.iterations:
            r = results(run.path, t, name)
            if r:
                curve.append((f"iter {t}", r))
                last = (t, r)
        parts.append(f"<h3>{_e(name)} ({_e(b.get('suite', ''))})</h3>")
        if not curve:
            parts.append(run.no_data("benchmark"))
            continue
        fig, ax = _figure()
        xs = list(range(len(curve)))
        ys = [_nan(r.get("score")) for _, r in curve]
        lo = [y - _nan(r.get("ci_low")) for y, (_, r) in zip(ys, curve, strict=True)]
        hi = [_nan(r.get("ci_high")) - y for y, (_, r) in zip(ys, curve, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", color=COLORS[1], capsize=3)
        ax.set_xticks(xs)
        ax.set_xticklabels([lab for lab, _ in curve])
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.margins(y=0.25)
        ax.set_title(f"{name}: score by policy, 95% interval")
        ax.set_ylabel("score")
        rows = [
            [
                _e(lab),
                _num(r.get("score"), 2),
                f"{_num(r.get('ci_low'), 2)} – {_num(r.get('ci_high'), 2)}",
                _e(r.get("judged")),
                _e(r.get("excluded")),
                _e(r.get("errors")),
            ]
            for lab, r in curve
        ]
        table = _table(
            ["policy", "score", "95% interval", "judged", "unparseable", "failed"], rows, text={0}
        )
        parts.append(_figs(_img(fig, f"{name} score by policy")) + table)
        if last is not None:
            parts.append(_bench_extremes(name, last[0], last[1]))
    return _section("benchmarks", title, "".join(parts))


def _bench_extremes(name: str, t: int, result: dict[str, Any]) -> str:
    """The questions the latest policy did best and worst on, with both answers and the
    judge's reasoning."""
    scored = [d for d in result.get("details") or [] if isinstance(d.get("value"), int | float)]
    if not scored:
        return ""
    scored.sort(key=lambda d: d["value"])
    worst = scored[:BIGGEST]
    best = [d for d in scored[::-1][:BIGGEST] if d not in worst]
    rows = []
    for kind, items in (("win", best), ("loss", worst)):
        for d in items:
            rows.append(
                [
                    _e(kind),
                    _e(d.get("question_id")),
                    _num(d.get("value"), 2),
                    _prompt_cell(d.get("question")),
                    _prompt_cell(d.get("answer")),
                    _prompt_cell(d.get("other", "")),
                    _prompt_cell(d.get("reasoning")),
                ]
            )
    table = _table(
        [
            "",
            "question",
            "value",
            "question text",
            "policy's answer",
            "baseline / reference",
            "judge",
        ],
        rows,
        text={0, 1},
    )
    return f"<h4>Biggest wins and losses (policy after iteration {t})</h4>" + table


def _disabled(sid: str, title: str) -> str:
    return _section(
        sid,
        title,
        f'<p class="disabled">{BASELINE_NOTE}: this run has no create '
        "step, so there is nothing to show here.</p>",
    )


def _informativeness_section(run: _Run) -> str:
    title = "Informativeness of the prompts and the sampled subset"
    if not run.creator:
        return _disabled("informativeness", title)
    metric = _get(run.spec, "creator", "informativeness", default="gap")
    sampling = _get(run.spec, "creator", "sampling", default="?")
    images, rows = [], []
    for t in run.iterations:
        scores = run.frame(t, "create", "scores.parquet")
        if scores is None or not len(scores):
            continue
        values = scores["informativeness"].to_numpy(dtype=float)
        sel = scores["selected"].to_numpy(dtype=bool)
        bins = np.histogram_bin_edges(values, bins=min(30, max(6, len(values) // 3))).tolist()
        fig, ax = _figure()
        ax.hist(
            values,
            bins=bins,
            color="#b8c2cc",
            edgecolor="white",
            label=f"all prompts ({len(values)})",
        )
        ax.hist(
            values[sel],
            bins=bins,
            color=COLORS[1],
            edgecolor="white",
            alpha=0.9,
            label=f"sampled for evolving ({int(sel.sum())})",
        )
        ax.axvline(
            values.mean(),
            color="#333",
            linestyle="--",
            linewidth=1,
            label=f"mean {values.mean():.3g}",
        )
        ax.set_title(
            f"iter {t}: informativeness ({_mpl_text(metric)}, {_mpl_text(sampling)} sampling)"
        )
        ax.set_xlabel(f"informativeness ({_mpl_text(metric)})")
        ax.set_ylabel("prompts")
        _int_y(ax)
        ax.legend(loc="upper right")
        images.append(_img(fig, f"informativeness histogram, iteration {t}"))
        rows.append(
            [
                str(t),
                str(len(values)),
                str(int(sel.sum())),
                _num(values.mean()),
                _num(values[sel].mean() if sel.any() else None),
                _num(values[~sel].mean() if (~sel).any() else None),
            ]
        )
    if not images:
        return _section(
            "informativeness",
            title,
            run.no_data("create"),
        )
    table = _table(
        ["iter", "prompts", "sampled", "mean (all)", "mean (sampled)", "mean (not sampled)"], rows
    )
    note = (
        f'<p class="note">Grey: every prompt of X_t; orange: the prompts the '
        f"{_e(sampling)} sampler chose to evolve.</p>"
    )
    missing = run.missing_for("create")
    extra = _missing("Not yet created: " + ", ".join(missing)) if missing else ""
    return _section("informativeness", title, note + _figs(*images) + table + extra)


def _lineage_section(run: _Run) -> str:
    title = "Lineage of the evolved prompts"
    if not run.creator:
        return _disabled("lineage", title)
    evolved = [
        f.assign(iteration=t)
        for t in run.iterations
        if (f := run.frame(t, "create", "evolved.parquet")) is not None
    ]
    mixed = {
        t: f for t in run.iterations if (f := run.frame(t, "create", "mixed.parquet")) is not None
    }
    if not evolved and not mixed:
        return _section(
            "lineage",
            title,
            run.no_data("create"),
        )
    images = []
    seeds = run.prepared("train.parquet")
    n_seeds = len(seeds) if seeds is not None else None
    allev = pd.concat(evolved, ignore_index=True) if evolved else pd.DataFrame()
    table = ""
    if len(allev):
        per = allev.groupby(["root_id", "iteration"]).size().unstack(fill_value=0)
        per = per.loc[per.sum(axis=1).sort_values(ascending=False, kind="stable").index]
        top = per.head(TOP_SEEDS)
        fig, ax = _figure()
        bottom = np.zeros(len(top))
        for i, t in enumerate(top.columns):
            ax.bar(
                range(len(top)),
                top[t].to_numpy(),
                bottom=bottom,
                color=COLORS[i % len(COLORS)],
                label=f"evolved in iter {t}",
                width=0.7,
            )
            bottom += top[t].to_numpy()
        ax.set_xticks(range(len(top)))
        ax.set_xticklabels([f"#{i + 1}" for i in range(len(top))])
        shown = f"top {len(top)} of " if len(per) > len(top) else ""
        ax.set_title(f"Descendants per seed prompt ({shown}{len(per)} seeds with descendants)")
        ax.set_xlabel("seed prompt (rank; ids in the table below)")
        ax.set_ylabel("evolved descendants")
        _int_y(ax)
        ax.legend(loc="upper right")
        images.append(_img(fig, "descendants per seed prompt"))
        texts = run.prompt_texts()
        depth = allev.groupby("root_id")["depth"].max()
        rows = []
        for rank, (root, counts) in enumerate(per.head(8).iterrows(), start=1):
            rows.append(
                [
                    f"#{rank}",
                    _e(root),
                    _prompt_cell(texts.get(str(root), "")),
                    *(str(int(counts[t])) for t in per.columns),
                    str(int(counts.sum())),
                    str(int(depth[root])),
                ]
            )
        table = "<h3>Seed prompts with the most descendants</h3>" + _table(
            [
                "rank",
                "seed id",
                "seed prompt",
                *(f"iter {t}" for t in per.columns),
                "total",
                "max depth",
            ],
            rows,
            text={0, 1, 2},
        )
    if mixed:
        fig, ax = _figure()
        depths = sorted({int(d) for f in mixed.values() for d in f["depth"]})
        width = 0.8 / len(mixed)
        for i, (t, f) in enumerate(mixed.items()):
            counts = f["depth"].astype(int).value_counts()
            xs = np.arange(len(depths)) + (i - (len(mixed) - 1) / 2) * width
            ax.bar(
                xs,
                [int(counts.get(d, 0)) for d in depths],
                width=width,
                color=COLORS[i % len(COLORS)],
                label=f"X_{t + 1} (after iter {t})",
            )
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels([str(d) for d in depths])
        ax.set_title("Depth of the next prompt set (0 = seed prompt)")
        ax.set_xlabel("evolution depth")
        ax.set_ylabel("prompts")
        _int_y(ax)
        ax.legend(loc="upper right")
        images.append(_img(fig, "depth distribution"))
    seeds_note = f" of {n_seeds} seed prompts" if n_seeds is not None else ""
    roots = allev["root_id"].nunique() if len(allev) else 0
    note = (
        f'<p class="note">{len(allev)} evolved prompts descend from {roots}'
        f"{seeds_note}. Lineage from evolved.parquet (root, depth) and mixed.parquet "
        "(the next prompt set, buffer prompts included).</p>"
    )
    return _section("lineage", title, note + _figs(*images) + table)


def _evolutions_section(run: _Run) -> str:
    title = "Example evolutions"
    if not run.creator:
        return _disabled("evolutions", title)
    texts = run.prompt_texts()
    rows, dropped_rows = [], []
    for t in run.iterations:
        ev = run.frame(t, "create", "evolved.parquet")
        if ev is None:
            continue
        dropped = run.frame(t, "create", "dropped.parquet")
        if dropped is not None and len(dropped):
            for reason, n in dropped["reason"].astype(str).value_counts().items():
                dropped_rows.append([str(t), _e(reason, 120), str(int(n))])
        if not len(ev):
            rows.append(
                [str(t), '<td class="p">–</td>', "–", '<td class="p">no evolved prompt kept</td>']
            )
            continue
        parents = (
            ev.groupby("parent_id", sort=False)["parent_informativeness"]
            .first()
            .sort_values(ascending=False, kind="stable")
            .head(EXAMPLE_PARENTS)
        )
        for pid, info in parents.items():
            kids = ev[ev["parent_id"] == pid]
            items = "".join(
                f'<li><span class="tag">{_e(k.method)}</span> '
                f"{_e(_clean(k.prompt).strip(), TEXT_LIMIT)}</li>"
                for k in kids.itertuples()
            )
            rows.append(
                [
                    str(t),
                    _prompt_cell(texts.get(str(pid), f"(text of {pid} not found)")),
                    _num(info),
                    f'<td class="p"><ul class="kids">{items}</ul></td>',
                ]
            )
    if not rows:
        return _section(
            "evolutions",
            title,
            run.no_data("create"),
        )
    note = (
        f'<p class="note">Per iteration, the {EXAMPLE_PARENTS} most informative parents '
        "and every kept rewrite of each (text shortened to "
        f"{TEXT_LIMIT} characters; hover for the full prompt).</p>"
    )
    table = _table(
        ["iter", "parent prompt", "parent informativeness", "evolved children"], rows, text={1, 3}
    )
    if dropped_rows:
        table += "<h3>Evolver replies dropped by cleaning</h3>" + _table(
            ["iter", "reason", "replies"], dropped_rows, text={1}
        )
    else:
        table += '<p class="note">No evolver reply was dropped by cleaning.</p>'
    return _section("evolutions", title, note + table)


def _loss_section(run: _Run) -> str:
    title = "Training"
    hist = {t: h for t in run.iterations if (h := run.history(t)) is not None}
    if not hist:
        return _section(
            "loss",
            title,
            run.no_data("train"),
        )
    algo = _get(run.spec, "solver", "algorithm", default="")
    images = []
    fig, ax = _figure()
    for i, (t, h) in enumerate(hist.items()):
        ax.plot(
            h["step"],
            h["loss"],
            marker="o",
            markersize=3,
            color=COLORS[i % len(COLORS)],
            label=f"iter {t}",
        )
    ax.set_title(f"Training loss per iteration ({_mpl_text(algo)})".replace(" ()", ""))
    if _is_dpo(run):
        ax.axhline(math.log(2), color="#777", linewidth=0.8, linestyle=":", label="ln 2 (start)")
    ax.set_xlabel("optimizer step")
    _int_x(ax)
    ax.set_ylabel("loss")
    ax.legend(loc="best")
    images.append(_img(fig, "training loss"))
    second = next(
        (
            c
            for c in ("rewards/margins", "rewards/accuracies")
            if all(c in h.columns for h in hist.values())
        ),
        None,
    )
    if second:
        fig, ax = _figure()
        for i, (t, h) in enumerate(hist.items()):
            ax.plot(
                h["step"],
                h[second],
                marker="o",
                markersize=3,
                color=COLORS[i % len(COLORS)],
                label=f"iter {t}",
            )
        ax.set_title(f"Implicit reward {second.split('/')[1]} (chosen vs rejected)")
        ax.set_xlabel("optimizer step")
        _int_x(ax)
        ax.set_ylabel(second)
        ax.legend(loc="best")
        images.append(_img(fig, second))
    rows = []
    for t in run.iterations:
        c = run.counts(t, "train")
        if c:
            rows.append(
                [
                    str(t),
                    _num(c.get("pairs")),
                    _num(c.get("pairs_evolved")),
                    _num(c.get("pairs_buffer")),
                    _num(c.get("tied_dropped")),
                    _num(c.get("steps")),
                    _num(c.get("train_loss")),
                    _num(c.get("reward_accuracy")),
                ]
            )
    table = _table(
        [
            "iter",
            "pairs",
            "from evolved",
            "from buffer",
            "tied (dropped)",
            "steps",
            "train loss",
            "reward accuracy",
        ],
        rows,
    )
    missing = run.missing_for("train")
    extra = _missing("Not yet trained: " + ", ".join(missing)) if missing else ""
    return _section("loss", title, _figs(*images) + table + extra)
