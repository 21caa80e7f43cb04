"""Where a step's time goes: model downloads, loading and unloading, generation, scoring,
evolving, training, writing.

A step's code marks its parts with ``with timed("generate"): ...``; the seconds add up in the
``StepClock`` that ``run_phase`` activates for the step, and end up in the step's
``_SUCCESS.json`` (``timings.phases``), its Prometheus series ``eva_step_phase_seconds``, the
report and MLflow. What no part claims is ``other`` (bookkeeping, reading inputs, waiting).

The clock is per thread: steps that run side by side in one process (the tests' in-process
pods) each keep their own, and a part timed where no clock is active costs nothing.
Nested parts count once, in the outermost one (a model loaded inside a timed "generate" is
generation time), and a loader that calls another loader is one model load.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

# The parts of a step, in the order the report stacks them. One definition: the metrics, the
# report, MLflow and the tests import it.
STEP_PARTS = (
    "download",
    "load",
    "unload",
    "generate",
    "score",
    "evolve",
    "train",
    "write",
    "other",
)


class StepClock:
    """Seconds per part of one step."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.loads = 0  # models loaded (policy generators, reward models, evolvers, trainers)
        self._depth = 0
        self._loading = False

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if name not in STEP_PARTS or name == "other":
            raise ValueError(f"unknown step part {name!r}; one of {STEP_PARTS[:-1]}")
        outer_loading = self._loading
        if name == "load" and not outer_loading:
            self.loads += 1  # one model, even when its loader calls another (the evolver)
        self._loading = outer_loading or name == "load"
        outermost = self._depth == 0
        self._depth += 1
        start = time.monotonic()
        try:
            yield
        finally:
            self._depth -= 1
            self._loading = outer_loading
            if outermost:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start

    def breakdown(self, total: float | None = None) -> dict[str, float]:
        """Seconds per part (all of STEP_PARTS), ``other`` the rest of ``total``."""
        elapsed = time.monotonic() - self.started if total is None else total
        return split_seconds(self.seconds, elapsed)


def split_seconds(parts: dict[str, float], total: float) -> dict[str, float]:
    """Every part's seconds rounded to milliseconds, with ``other`` = total - the rest (>= 0)."""
    out = {name: round(float(parts.get(name, 0.0)), 3) for name in STEP_PARTS[:-1]}
    out["other"] = round(max(0.0, float(total) - sum(out.values())), 3)
    return out


_local = threading.local()


def current() -> StepClock | None:
    clock: StepClock | None = getattr(_local, "clock", None)
    return clock


@contextlib.contextmanager
def activate(clock: StepClock) -> Iterator[StepClock]:
    """Make ``clock`` this thread's for a step, and put back whatever was before."""
    previous = current()
    _local.clock = clock
    try:
        yield clock
    finally:
        _local.clock = previous


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Count the block's seconds as part ``name`` of the current step (if one is timed)."""
    clock = current()
    if clock is None:
        yield
        return
    with clock.part(name):
        yield
