"""The reports' figures: one look, inline PNGs, axis helpers."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from eva_runtime.report.markup import _e

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


FIG_W, FIG_H, DPI = 6.0, 3.5, 100
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
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
