"""Two runs side by side (``eva compare``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eva_runtime.artifacts import write_output
from eva_runtime.report.figures import COLORS, _figs, _figure, _img, _int_ticks, _slot, _style
from eva_runtime.report.markup import (
    _curve_text,
    _e,
    _missing,
    _mpl_text,
    _num,
    _page,
    _section,
    _table,
)
from eva_runtime.report.rundata import BASELINE_NOTE, _is_dpo, _Run
from eva_runtime.spec import flatten


def write_compare(
    run_a: str | Path,
    run_b: str | Path,
    out: str | Path,
    *,
    labels: tuple[str, str] | None = None,
) -> Path:
    """Write one HTML page that puts two runs (typically eva vs its baseline) on the same axes."""
    a, b = _Run(run_a), _Run(run_b)
    if labels is None:
        labels = (a.label, b.label)
        if labels[0] == labels[1]:
            labels = (f"{a.label} (A)", f"{b.label} (B)")
    runs = list(zip(labels, (a, b), strict=True))
    with _style():
        body = "".join(
            [
                _compare_header(runs),
                _compare_spec(runs),
                _compare_summary(runs),
                _compare_heldout(runs),
                _compare_reward(runs),
                _compare_loss(runs),
            ]
        )
    page = _page(f"eva compare: {labels[0]} vs {labels[1]}", body)
    return write_output(out, page.encode("utf-8", errors="replace"))


def _compare_header(runs: Sequence[tuple[str, _Run]]) -> str:
    items = []
    for i, (label, run) in enumerate(runs):
        kind = "eva" if run.creator else BASELINE_NOTE
        missing = run.missing()
        state = (
            (
                f"incomplete, missing {len(missing)}: {', '.join(missing[:6])}"
                + (" …" if len(missing) > 6 else "")
            )
            if missing
            else "complete"
        )
        items.append(
            f'<li><span class="tag" style="background:{COLORS[i]};color:#fff">'
            f"{'AB'[i]}</span><strong>{_e(label)}</strong> — "
            + (f"{_e(run.label)}, " if label != run.label else "")
            + f"{_e(kind)}, "
            f'{len(run.iterations)} iterations, {_e(state)}<div class="sub">{_e(run.path)}'
            "</div></li>"
        )
    return (
        f'<header class="top" id="header"><h1>eva run comparison: {_e(runs[0][0])} vs '
        f"{_e(runs[1][0])}</h1><ul>{''.join(items)}</ul></header>"
    )


def _compare_spec(runs: Sequence[tuple[str, _Run]]) -> str:
    (la, a), (lb, b) = runs
    fa, fb = flatten(a.spec), flatten(b.spec)
    skip = ("policy.model", "prompts.source")  # per-run paths, usually differ trivially
    keys = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) and k not in skip]
    if not keys:
        body = '<p class="note">The two specs are the same (paths aside).</p>'
    else:
        rows = [[_e(k), _e(_spec_value(fa, k), 120), _e(_spec_value(fb, k), 120)] for k in keys]
        body = _table(["spec field", la, lb], rows, text={0, 1, 2})
    return _section("spec", "Spec differences", body)


def _spec_value(flat: dict[str, Any], key: str) -> str:
    if key not in flat:
        return "– (not set)"
    value = flat[key]
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _compare_summary(runs: Sequence[tuple[str, _Run]]) -> str:
    (la, a), (lb, b) = runs
    metrics = [
        ("prompts", "prompts"),
        ("reward_mean", "mean reward"),
        ("gap_mean", "mean gap"),
        ("pairs", "pairs"),
        ("train_loss", "train loss"),
        ("heldout_after", "held-out after"),
        ("win_rate", "win rate"),
    ]
    ra = {r["iteration"]: r for r in a.rows}
    rb = {r["iteration"]: r for r in b.rows}
    its = sorted(set(ra) | set(rb))
    head = (
        '<tr><th class="t" rowspan="2">iter</th>'
        + "".join(f'<th class="grp" colspan="2">{_e(title)}</th>' for _k, title in metrics)
        + "</tr><tr>"
        + '<th class="a">A</th><th class="b">B</th>' * len(metrics)
        + "</tr>"
    )
    rows = []
    ca, cb = a.heldout_curve(), b.heldout_curve()
    if ca and cb and ca[0][0] == "base" and cb[0][0] == "base":
        base = ["base"] + ["–", "–"] * (len(metrics) - 2) + [_num(ca[0][1]), _num(cb[0][1])]
        rows.append([*base, "–", "–"])
    for t in its:
        row = [str(t)]
        for k, _title in metrics:
            row += [_num(ra.get(t, {}).get(k)), _num(rb.get(t, {}).get(k))]
        rows.append(row)
    legend = (
        f'<p class="note"><strong>A</strong> = {_e(la)}, <strong>B</strong> = {_e(lb)}. '
        "The base row is the held-out reward of the starting policy.</p>"
    )
    curves = "".join(
        f'<p class="curve"><strong>{_e(lab)}:</strong> {_curve_text(c)}</p>'
        for lab, c in ((la, ca), (lb, cb))
        if c
    )
    return _section(
        "summary",
        "Side-by-side summary",
        legend + _table([], rows, text={0}, head=head, cls="cmp") + curves,
    )


def _compare_heldout(runs: Sequence[tuple[str, _Run]]) -> str:
    title = "Held-out reward"
    fig, ax = _figure()
    labels: list[str] = []
    drawn = 0
    for i, (label, run) in enumerate(runs):
        curve = run.heldout_curve()
        if not curve:
            continue
        drawn += 1
        if len(curve) > len(labels):
            labels = [c[0] for c in curve]
        xs = np.arange(len(curve)) + (i - 0.5) * 0.06
        ax.errorbar(
            xs,
            [c[1] for c in curve],
            yerr=[c[2] or 0.0 for c in curve],
            marker="os"[i],
            capsize=3,
            color=COLORS[i],
            label=_mpl_text(label),
        )
    if not drawn:
        return _section("heldout", title, _missing("Neither run has a held-out evaluation yet."))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_title("Held-out reward by iteration (± s.e.)")
    ax.set_xlabel("policy")
    ax.set_ylabel("mean held-out reward")
    ax.legend(loc="best")
    images = [_img(fig, "held-out reward, both runs")]
    fig, ax = _figure()
    width = 0.38
    its: set[int] = set()
    for i, (label, run) in enumerate(runs):
        pts = [(int(c[0].split()[1]), c[3]) for c in run.heldout_curve() if c[3] is not None]
        its.update(t for t, _ in pts)
        ax.bar(
            [t + (i - 0.5) * width for t, _ in pts],
            [w for _, w in pts],
            width=width,
            color=COLORS[i],
            label=_mpl_text(label),
        )
    ax.axhline(0.5, color="#555", linestyle="--", linewidth=1)
    _int_ticks(ax, sorted(its) or [0], "iter ")
    ax.set_ylim(0, 1)
    ax.set_title("Win rate of each new policy vs its previous one")
    ax.set_xlabel("iteration")
    ax.set_ylabel("paired win rate")
    ax.legend(loc="upper left")
    images.append(_img(fig, "win rate, both runs"))
    return _section("heldout", title, _figs(*images))


def _compare_reward(runs: Sequence[tuple[str, _Run]]) -> str:
    title = "Reward on the training prompts"
    images = []
    for key, fig_title, ylabel in (
        ("reward_mean", "Mean reward of the policy's samples on X_t", "mean reward"),
        ("gap_mean", "Mean reward gap (best − worst per prompt)", "mean gap"),
    ):
        fig, ax = _figure()
        its: set[int] = set()
        for i, (label, run) in enumerate(runs):
            pts = [(r["iteration"], r[key]) for r in run.rows if r.get(key) is not None]
            its.update(t for t, _ in pts)
            ax.plot(
                [t for t, _ in pts],
                [v for _, v in pts],
                marker="os"[i],
                color=COLORS[i],
                label=_mpl_text(label),
            )
        if not its:
            continue
        _int_ticks(ax, sorted(its), "iter ")
        ax.set_title(fig_title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
        images.append(_img(fig, f"{ylabel}, both runs"))
    if not images:
        return _section("reward", title, _missing("Neither run has a complete generate step."))
    note = (
        '<p class="note">Each run scores its own prompt set: eva\'s X_t is evolved, the '
        "baseline's is fixed, so compare trends here and levels on the held-out set.</p>"
    )
    return _section("reward", title, note + _figs(*images))


def _compare_loss(runs: Sequence[tuple[str, _Run]]) -> str:
    title = "Training"
    images = []
    for column, fig_title, ylabel in (
        ("loss", "Training loss", "loss"),
        ("rewards/margins", "Implicit reward margin (chosen − rejected)", "rewards/margins"),
    ):
        fig, ax = _figure()
        its: set[int] = set()
        for i, (label, run) in enumerate(runs):
            first = True
            for t in run.iterations:
                h = run.history(t)
                if h is None or column not in h.columns:
                    continue
                its.add(t)
                ax.plot(
                    _slot(t, h["step"].to_numpy(dtype=float)),
                    h[column],
                    marker="os"[i],
                    markersize=3,
                    color=COLORS[i],
                    linestyle="-" if i == 0 else "--",
                    label=_mpl_text(label) if first else None,
                )
                first = False
        if not its:
            continue
        if column == "loss" and all(_is_dpo(r) for _l, r in runs):
            ax.axhline(math.log(2), color="#777", linewidth=0.8, linestyle=":")
        for t in sorted(its)[1:]:
            ax.axvline(t, color="#bbb", linewidth=0.8)
        ticks = sorted(its)
        ax.set_xticks([t + 0.5 for t in ticks])
        ax.set_xticklabels([f"iter {t}" for t in ticks])
        ax.set_xlim(min(ticks), max(ticks) + 1)
        ax.grid(axis="x", visible=False)
        ax.set_title(fig_title)
        ax.set_xlabel("iteration (each one's optimizer steps spread over its slot)")
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
        images.append(_img(fig, f"{ylabel}, both runs"))
    if not images:
        return _section("loss", title, _missing("Neither run has a complete train step."))
    return _section("loss", title, _figs(*images))
