"""The steps of an eva run, each runnable alone (``eva phase STEP``) over a run directory."""

from __future__ import annotations

from eva_runtime.artifacts import STEPS
from eva_runtime.phases.context import Context

PHASES = ("prepare", *STEPS)


def steps_for(creator_enabled: bool) -> tuple[str, ...]:
    """The steps of one iteration, in order."""
    if creator_enabled:
        return STEPS
    return ("generate", "train", "evaluate")


def run_phase(
    ctx: Context, phase: str, iteration: int = 0, shard: int = 0, num_shards: int = 1
) -> dict:
    """Run one step (a no-op when it is already complete) and return its summary."""
    if phase == "prepare":
        from eva_runtime.phases.prepare import run_prepare

        return run_prepare(ctx)
    if phase in ("generate", "generate-evolved"):
        from eva_runtime.phases.generate import run_generate

        return run_generate(ctx, iteration, phase, shard, num_shards)
    if phase == "create":
        from eva_runtime.phases.create import run_create

        return run_create(ctx, iteration)
    if phase == "train":
        from eva_runtime.phases.train import run_train

        return run_train(ctx, iteration)
    if phase == "evaluate":
        from eva_runtime.phases.evaluate import run_evaluate

        return run_evaluate(ctx, iteration)
    raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")


__all__ = ["PHASES", "Context", "run_phase", "steps_for"]
