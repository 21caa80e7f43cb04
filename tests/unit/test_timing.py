"""Step time accounting over plain data: parts add up, nesting counts once, loads are models,
the clock is per thread, shards merge."""

from __future__ import annotations

import threading
import time

import pytest

from eva_runtime.phases.context import merged_timings
from eva_runtime.timing import STEP_PARTS, StepClock, activate, current, split_seconds, timed


def test_parts_add_up_and_nested_parts_count_once() -> None:
    clock = StepClock()
    with activate(clock):
        with timed("generate"):
            time.sleep(0.02)
            with timed("load"):  # inside generate: generation time, still one model loaded
                time.sleep(0.01)
        with timed("generate"):
            time.sleep(0.01)
        with timed("load"), timed("load"):  # a loader calling a loader: one model
            pass
    assert clock.seconds["generate"] == pytest.approx(0.04, abs=0.02)
    assert clock.seconds.get("load", 0.0) < 0.01
    assert clock.loads == 2
    parts = clock.breakdown(1.0)
    assert list(parts) == list(STEP_PARTS)
    assert parts["other"] == pytest.approx(1.0 - sum(v for k, v in parts.items() if k != "other"))


def test_a_part_outside_a_timed_step_costs_nothing_and_unknown_parts_are_refused() -> None:
    assert current() is None
    with timed("train"):
        pass
    with (
        pytest.raises(ValueError, match="unknown step part 'sleep'"),
        activate(StepClock()),
        timed("sleep"),
    ):
        pass
    with pytest.raises(ValueError, match="'other'"), activate(StepClock()), timed("other"):
        pass
    assert current() is None


def test_split_seconds_never_reports_negative_other() -> None:
    assert split_seconds({"train": 2.0004}, 2.0)["other"] == 0.0
    assert split_seconds({}, 1.5) == {**{p: 0.0 for p in STEP_PARTS[:-1]}, "other": 1.5}


def test_each_thread_keeps_its_own_clock() -> None:
    seen: dict[str, float] = {}

    def step(name: str, part: str) -> None:
        clock = StepClock()
        with activate(clock), timed(part):
            time.sleep(0.03)
        seen[name] = clock.seconds.get("train", 0.0)

    threads = [
        threading.Thread(target=step, args=(n, p)) for n, p in (("a", "train"), ("b", "score"))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert seen["a"] > 0.02 and seen["b"] == 0.0


def test_shards_merge_their_parts_and_loads() -> None:
    a = {"seconds": 2.0, "phases": {"generate": 1.5, "load": 0.2, "other": 0.3}, "loads": 2}
    b = {"seconds": 1.0, "phases": {"generate": 0.5, "other": 0.5}, "loads": 2}
    merged = merged_timings([a, b, {"seconds": 0.5}])  # a marker from before the parts
    assert merged["seconds"] == 3.5 and merged["loads"] == 4
    assert merged["phases"]["generate"] == 2.0 and merged["phases"]["load"] == 0.2
    assert merged["phases"]["other"] == pytest.approx(1.3)
