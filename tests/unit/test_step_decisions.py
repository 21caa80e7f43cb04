"""The small decisions inside the steps, over plain numbers: how many buffer prompts join the
evolved ones (create) and the win rate of the new policy over the previous one (evaluate)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eva_runtime.phases.create import buffer_size
from eva_runtime.phases.evaluate import win_rate


@pytest.mark.parametrize(
    ("evolved", "ratio", "available", "expected"),
    [
        (16, 0.2, 100, 4),  # 4 / (4 + 16) = 0.2
        (10, 0.5, 100, 10),  # half and half
        (10, 0.0, 100, 0),  # no buffer asked
        (3, 0.2, 100, 1),  # 0.75 rounds to 1
        (1, 0.2, 100, 0),  # 0.25 rounds to 0
        (16, 0.2, 2, 2),  # never more than there is
        (0, 0.2, 7, 7),  # nothing evolved: every available prompt
        (0, 0.0, 7, 7),
        (9, 0.9, 1000, 81),  # 81 / 90 = 0.9
    ],
)
def test_buffer_size_makes_the_asked_share_of_the_mix(evolved, ratio, available, expected):
    assert buffer_size(evolved, ratio, available) == expected


def test_buffer_size_is_the_exact_share_rounded_and_capped():
    for evolved in range(1, 60):
        for ratio in (0.1, 0.2, 0.25, 1 / 3, 0.5, 0.8):
            exact = evolved * ratio / (1 - ratio)  # b / (b + e) = ratio
            assert abs(buffer_size(evolved, ratio, 10_000) - exact) <= 0.5 + 1e-9
            assert buffer_size(evolved, ratio, 3) <= 3


def test_win_rate_counts_ties_as_half():
    new = np.array([1.0, 0.5, 0.2, 0.0])
    old = np.array([0.0, 0.5, 0.3, 0.0])
    assert win_rate(new, old) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_win_rate_extremes_and_symmetry():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([0.0, 1.0, 2.0])
    assert win_rate(a, b) == 1.0
    assert win_rate(b, a) == 0.0
    assert win_rate(a, a) == 0.5
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert win_rate(x, y) + win_rate(y, x) == pytest.approx(1.0)


def test_win_rate_of_nothing_is_nan():
    assert math.isnan(win_rate(np.array([]), np.array([])))


def _ctx(tmp_path, **solver):
    from eva_runtime.artifacts import RunDir
    from eva_runtime.phases.context import Context
    from eva_runtime.spec import parse_run

    doc = {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": "r1"},
        "spec": {
            "policy": {"model": "org/model"},
            "prompts": {"source": "p.jsonl"},
            "rewardModel": {"model": "org/rm"},
            "solver": solver,
        },
    }
    return Context(run=parse_run(doc), run_dir=RunDir(tmp_path))


def test_train_settings_carry_every_solver_field_they_share(tmp_path):
    import dataclasses

    from eva_runtime.phases.train import train_settings

    ctx = _ctx(tmp_path, beta=0.05, learningRate=1e-5, epochs=2, maxLength=256)
    settings = train_settings(ctx, num_pairs=100, iteration=1)
    solver = ctx.spec.solver
    shared = [
        f.name
        for f in dataclasses.fields(settings)
        if hasattr(solver, f.name) and f.name not in ("lora", "deepspeed")
    ]
    assert {"beta", "learning_rate", "epochs", "max_length", "algorithm"} <= set(shared)
    for name in shared:
        assert getattr(settings, name) == getattr(solver, name), name
    assert settings.seed == train_settings(ctx, num_pairs=100, iteration=1).seed
    assert settings.seed != train_settings(ctx, num_pairs=100, iteration=2).seed


@pytest.mark.parametrize(
    ("per_device", "effective", "pairs", "accumulation"),
    [
        (2, 8, 100, 4),  # as asked
        (2, 8, 5, 3),  # never more than the data holds: 5 pairs, 3 steps of 2
        (2, 8, 1, 1),  # a tiny run still steps
        (4, 2, 100, 1),  # the per-device batch is the floor
    ],
)
def test_gradient_accumulation_reaches_the_effective_batch(
    tmp_path, per_device, effective, pairs, accumulation
):
    from eva_runtime.phases.train import train_settings

    ctx = _ctx(tmp_path, perDeviceBatchSize=per_device, effectiveBatchSize=effective)
    assert train_settings(ctx, pairs, 0).gradient_accumulation_steps == accumulation


def test_train_settings_defaults_are_the_specs():
    import dataclasses

    from eva_runtime.solver.settings import LoraSettings, TrainSettings
    from eva_runtime.spec import LoraSpec, SolverSpec

    solver, lora = SolverSpec(), LoraSpec()
    names = {"num_processes": "processes"}
    shared = [
        f
        for f in dataclasses.fields(TrainSettings)
        if names.get(f.name, f.name) in SolverSpec.model_fields
    ]
    assert len(shared) >= 15
    for f in shared:
        if f.name != "lora":
            assert f.default == getattr(solver, names.get(f.name, f.name)), f.name
    for f in dataclasses.fields(LoraSettings):
        if f.name != "target_modules":
            assert f.default == getattr(lora, f.name), f.name


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"max_length": 8},
            "TrainSettings: max_length: Input should be greater than or equal to 16",
        ),
        ({"learning_rate": 1.5}, "TrainSettings: learning_rate: Input should be less than 1"),
        ({"num_processes": 0}, "TrainSettings: num_processes: Input should be greater than"),
        ({"lr_scheduler": "step"}, "TrainSettings: lr_scheduler: Input should be 'linear'"),
        ({"algorithm": "dpo", "rpo_alpha": 2.0}, "rpoAlpha: only algorithm rpo reads it"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1"),
    ],
)
def test_train_settings_are_bounded_by_the_spec(fields, message):
    from eva_runtime.solver.settings import TrainSettings

    with pytest.raises(ValueError) as err:
        TrainSettings(**fields)
    assert message in str(err.value)


def test_lora_settings_are_bounded_by_the_spec():
    from eva_runtime.solver.settings import LoraSettings

    with pytest.raises(ValueError, match="LoraSettings: dropout: Input should be less than 1"):
        LoraSettings(dropout=1.0)
    assert LoraSettings(target_modules=("q_proj",)).target_modules == ("q_proj",)
