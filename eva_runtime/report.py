"""A one-file HTML report of an eva run, and a side-by-side comparison of two runs.

The report is a single self-contained file (figures as inline PNG data URIs, CSS inline,
no script, nothing fetched) because it gets attached to tickets, mailed and opened from
object storage, where relative image paths and CDNs break. It reads only the run
directory, so it works on a finished run, a running one and one that stopped half-way;
whatever is missing is named instead of failing the whole report.

Prompts, evolver replies and ids come from users and from models: every piece of text
taken from the run goes through ``html.escape`` and never into markup unescaped.
matplotlib is imported inside the functions that draw (and pyplot never), so importing
this module stays cheap and does not change the caller's matplotlib backend.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from eva_runtime.artifacts import PREPARE, RunDir, write_output
from eva_runtime.spec import flatten, steps_for
from eva_runtime.status import HEAD_TO_HEAD
from eva_runtime.timing import STEP_PARTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BASELINE_NOTE = "creator disabled (baseline)"

FIG_W, FIG_H, DPI = 6.0, 3.5, 100
TEXT_LIMIT = 280  # characters of a prompt shown in a table cell
EXAMPLE_PARENTS = 5  # example evolutions shown per iteration
TOP_SEEDS = 25  # seed prompts shown in the descendants chart
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1f2328;
 font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1260px;margin:0 auto;padding:20px 24px 40px}
header.top{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:0 0 10px;padding-bottom:6px;border-bottom:1px solid #e5e8eb}
h3{font-size:14px;margin:14px 0 6px}
.sub{color:#57606a;font-size:12px;word-break:break-all}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 20px;
 margin:14px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e5e8eb;text-align:right;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
td.t,th.t{text-align:left}
td.p{text-align:left;white-space:pre-wrap;word-break:break-word;max-width:440px;
 font-size:13px}
tr:nth-child(even) td{background:#fbfcfd}
th.grp{text-align:center}
th.a{color:#1f77b4}th.b{color:#ff7f0e}
table.cmp td:nth-child(even),table.cmp th.a,table.cmp th.grp{border-left:1px solid #d0d7de}
ul.kids{margin:0;padding-left:18px;text-align:left}
ul.kids li{white-space:pre-wrap;word-break:break-word;font-size:13px;margin:0 0 3px}
.tag{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:10px;
 padding:0 7px;font-size:11px;margin-right:4px;white-space:nowrap}
.tw{overflow-x:auto}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px;
 margin:6px 0 10px}
.figs figure{margin:0;max-width:600px}
.figs img{display:block;width:100%;height:auto;border:1px solid #e5e8eb;border-radius:4px}
.note{color:#57606a;margin:4px 0 8px}
.missing{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;
 margin:8px 0}
.ok{background:#dafbe1;border:1px solid #4ac26b;border-radius:6px;padding:8px 12px;
 margin:8px 0}
.disabled{background:#f6f8fa;border:1px dashed #8c959f;border-radius:6px;padding:8px 12px;
 color:#57606a;font-style:italic}
dl.spec{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:3px 14px;
 margin:10px 0 0}
dl.spec dt{color:#57606a}
dl.spec dd{margin:0;word-break:break-word}
.curve{font-variant-numeric:tabular-nums}
"""


# ---------------------------------------------------------------------------------------
# text and numbers


def _clean(value: Any) -> str:
    """Text safe to escape: control characters (invalid in HTML) shown as U+FFFD."""
    if value is None or (not isinstance(value, str) and _isna(value)):
        return ""
    return _CONTROL.sub("\ufffd", str(value))


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _e(value: Any, limit: int | None = None) -> str:
    """Escape untrusted text for HTML, truncating first so no entity is ever cut."""
    text = _clean(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return html.escape(text, quote=True)


def _prompt_cell(text: Any, cls: str = "p") -> str:
    """A prompt in a table cell; a truncated one keeps its full text in the tooltip."""
    clean = _clean(text).strip()
    title = f' title="{_e(clean, 4000)}"' if len(clean) > TEXT_LIMIT else ""
    return f'<td class="{cls}"{title}>{_e(clean, TEXT_LIMIT)}</td>'


def _num(value: Any, digits: int = 4) -> str:
    if value is None or _isna(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return _e(value)


def _pct(value: Any) -> str:
    if value is None or _isna(value):
        return "–"
    return f"{100 * float(value):.1f}%"


def _mpl_text(value: Any, limit: int = 40) -> str:
    """Text for a figure: short, and with ``$`` escaped so mathtext never parses it."""
    text = _clean(value).replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    text: Collection[int] = (),
    head: str | None = None,
    cls: str = "",
) -> str:
    """Rows of already-escaped cells (a cell may be a whole ``<td>``); columns in ``text``
    are left-aligned text, the rest right-aligned numbers. ``head`` replaces the header row."""
    if head is None:
        head = (
            "<tr>"
            + "".join(
                f'<th class="t">{_e(h)}</th>' if i in text else f"<th>{_e(h)}</th>"
                for i, h in enumerate(headers)
            )
            + "</tr>"
        )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if cell.startswith("<td"):
                cells.append(cell)
            else:
                cells.append(f'<td class="t">{cell}</td>' if i in text else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="tw"><table class="{cls}"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
        "</table></div>"
    )


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


# ---------------------------------------------------------------------------------------
# figures


_RC = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@contextmanager
def _style() -> Iterator[None]:
    """Our look for every figure, without touching the caller's global rcParams."""
    import matplotlib

    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        yield


def _figure(width: float = FIG_W, height: float = FIG_H) -> tuple[Figure, Axes]:
    """An Agg figure outside pyplot: no global figure registry, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (round(v) for v in fig.get_size_inches() * DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}" '
        f'width="{width}" height="{height}"></figure>'
    )


def _figs(*images: str) -> str:
    return '<div class="figs">' + "".join(images) + "</div>"


def _int_y(ax: Axes) -> None:
    """Counts get whole-number ticks, and headroom so the legend does not sit on a bar."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.22)


def _int_x(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _int_ticks(ax: Axes, values: Sequence[int], prefix: str = "") -> None:
    ax.set_xticks(list(values))
    ax.set_xticklabels([f"{prefix}{v}" for v in values])
    if len(values) == 1:
        ax.set_xlim(values[0] - 1, values[0] + 1)


# ---------------------------------------------------------------------------------------
# reading a run directory


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


class _Run:
    """What a run directory holds; every reader returns None for a step that is not complete."""

    def __init__(self, path: str | Path):
        from eva_runtime.errors import InputError
        from eva_runtime.summary import summary_rows

        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a run directory (no such folder)")
        self.rd = RunDir(self.path)
        manifest = self.path / "evarun.yaml"
        doc: dict[str, Any] = {}
        if manifest.exists():
            from eva_runtime import safe_yaml

            try:
                loaded = safe_yaml.load(manifest.read_text(encoding="utf-8", errors="replace"))
            except (yaml.YAMLError, ValueError, OSError):
                loaded = None  # the report names what it cannot read instead of failing
            doc = loaded if isinstance(loaded, dict) else {}
        self.has_manifest = bool(doc)
        self.spec: dict[str, Any] = _get(doc, "spec", default={}) or {}
        self.name = str(_get(doc, "metadata", "name", default=None) or self.path.name)
        self.namespace = str(
            _get(doc, "metadata", "namespace", default=None) or self.path.parent.name
        )
        self.iterations = RunDir(self.path).iterations()
        if not self.has_manifest and not self.iterations and not self.rd.prepare().path.exists():
            raise InputError(
                f"{self.path}: not a run directory (no evarun.yaml, no prepare step, no iter-* "
                "folders)"
            )
        enabled = _get(self.spec, "creator", "enabled", default=None)
        if enabled is None:  # the spec's default, or a guess from the folders without one
            enabled = (
                self.has_manifest
                or not self.iterations
                or any((self.path / f"iter-{t}" / "create").exists() for t in self.iterations)
            )
        self.creator = bool(enabled)
        self.benchmarks: list[dict[str, Any]] = [
            b
            for b in (_get(self.spec, "evaluation", "benchmarks", default=None) or [])
            if isinstance(b, dict)
        ]
        self.planned = int(_get(self.spec, "iterations", default=0) or 0)
        last = self.iterations[-1] + 1 if self.iterations else 0
        self.rows: list[dict[str, Any]] = summary_rows(self.rd, last)
        self._prompts: dict[str, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def steps(self) -> tuple[str, ...]:
        return steps_for(self.creator, bool(self.benchmarks))

    def counts(self, t: int, step: str) -> dict[str, Any]:
        sd = self.rd.step(t, step)
        return sd.summary().get("counts", {}) if sd.complete() else {}

    def head_to_head(self) -> bool:
        """Whether the evaluations compared policies directly (a pairwise reward)."""
        for t in self.iterations:
            sd = self.rd.step(t, "evaluate")
            if sd.complete():
                return bool(sd.summary().get("comparison") == HEAD_TO_HEAD)
        return False

    def time_parts(self, t: int, step: str) -> dict[str, float] | None:
        """Seconds per part of a complete step (None for a step recorded without them)."""
        sd = self.rd.step(t, step)
        parts = _get(sd.summary(), "timings", "phases") if sd.complete() else None
        return parts if isinstance(parts, dict) else None

    def seconds(self, t: int, step: str) -> float | None:
        sd = self.rd.step(t, step)
        return _get(sd.summary(), "timings", "seconds") if sd.complete() else None

    def frame(self, t: int, step: str, name: str) -> pd.DataFrame | None:
        sd = self.rd.step(t, step)
        path = sd.path / name
        if not sd.complete() or not path.exists():
            return None
        return pd.read_parquet(path)

    def prepared(self, name: str) -> pd.DataFrame | None:
        sd = self.rd.prepare()
        path = sd.path / name
        if not sd.complete() or not path.exists():
            return None
        return pd.read_parquet(path)

    def missing(self) -> list[str]:
        """Steps the spec asks for that have no ``_SUCCESS.json``, named as folders."""
        out = []
        if not self.rd.prepare().complete():
            out.append(
                PREPARE + (" (started, not complete)" if (self.path / PREPARE).exists() else "")
            )
        for t in range(self.expected_iterations):
            if not (self.path / f"iter-{t}").exists():
                out.append(f"iter-{t} (not started)")
                continue
            for step in self.steps:
                sd = self.rd.step(t, step)
                if not sd.complete():
                    started = " (started, not complete)" if sd.path.exists() else ""
                    out.append(f"iter-{t}/{step}{started}")
        return out

    @property
    def expected_iterations(self) -> int:
        return max([self.planned, *(t + 1 for t in self.iterations)])

    def missing_for(self, step: str) -> list[str]:
        """``iter-t/step`` for every expected iteration where that step is not complete."""
        return [
            f"iter-{t}/{step}"
            for t in range(self.expected_iterations)
            if not self.rd.step(t, step).complete()
        ]

    def no_data(self, *steps: str) -> str:
        """The notice for a section none of whose input steps has completed yet."""
        names = [m for step in steps for m in self.missing_for(step)]
        names = names or [f"iter-0/{steps[0]}"]
        return _missing(
            f"No {' / '.join(steps)} step is complete yet (missing: {', '.join(names)})."
        )

    def prompt_texts(self) -> dict[str, str]:
        """Prompt id -> text over the seed set and every evolved set (parents' text lookup)."""
        if self._prompts is None:
            texts: dict[str, str] = {}
            frames = [self.prepared("train.parquet"), self.prepared("heldout.parquet")]
            for t in self.iterations:
                frames += [
                    self.frame(t, "create", "evolved.parquet"),
                    self.frame(t, "create", "mixed.parquet"),
                ]
            for f in frames:
                if f is not None and {"prompt_id", "prompt"} <= set(f.columns):
                    texts.update(zip(f["prompt_id"].astype(str), f["prompt"], strict=True))
            self._prompts = texts
        return self._prompts

    def heldout_curve(self) -> list[tuple[str, float, float | None, float | None]]:
        """(label, mean held-out reward, its standard error, win rate vs the previous policy)."""
        curve: list[tuple[str, float | None, float | None, float | None]] = []
        for t in self.iterations:
            c = self.counts(t, "evaluate")
            if not c:
                break
            if not curve and c.get("reward_previous") is not None:
                curve.append(("base", c["reward_previous"], self._base_sem(t), None))
            curve.append(
                (f"iter {t}", c.get("reward_new"), c.get("reward_new_sem"), c.get("win_rate"))
            )
        return [(a, b, c, d) for a, b, c, d in curve if b is not None]

    def _base_sem(self, t: int) -> float | None:
        frame = self.frame(t, "evaluate", "responses.parquet")
        if frame is None or "policy" not in frame.columns:
            return None
        prev = frame.loc[frame["policy"] == "previous", "reward"].to_numpy(dtype=float)
        if len(prev) < 2:
            return None
        return float(prev.std(ddof=1) / math.sqrt(len(prev)))

    def history(self, t: int) -> pd.DataFrame | None:
        frame = self.frame(t, "train", "history.parquet")
        if frame is None or "loss" not in frame.columns:
            return None
        frame = frame[frame["loss"].notna()]
        if "step" not in frame.columns:
            frame = frame.assign(step=np.arange(1, len(frame) + 1))
        return frame.reset_index(drop=True) if len(frame) else None


# ---------------------------------------------------------------------------------------
# the run report


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


def _curve_text(curve: Sequence[tuple[str, float, Any, Any]]) -> str:
    return " → ".join(f"{_e(label)} {float(v):.4f}" for label, v, _s, _w in curve)


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


# ---------------------------------------------------------------------------------------
# comparing two runs


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


def _slot(t: int, steps: np.ndarray) -> np.ndarray:
    """Map an iteration's steps onto [t + 0.08, t + 0.92] so runs with different step counts
    line up iteration by iteration."""
    lo, hi = float(steps.min()), float(steps.max())
    if hi == lo:
        return np.full(len(steps), t + 0.5)
    return t + 0.08 + 0.84 * (steps - lo) / (hi - lo)


def _nan(value: Any) -> float:
    """A missing point as NaN: matplotlib leaves a gap there."""
    return float("nan") if value is None else float(value)


def _is_dpo(run: _Run) -> bool:
    """Sigmoid DPO, whose loss starts at ln 2 (other loss types start elsewhere)."""
    algorithm = _get(run.spec, "solver", "algorithm", default="dpo")
    return bool(
        algorithm == "dpo" and _get(run.spec, "solver", "lossType", default="sigmoid") == "sigmoid"
    )
