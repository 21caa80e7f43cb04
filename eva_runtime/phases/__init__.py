"""The steps of an eva run, each runnable alone (``eva phase STEP``) over a run directory."""

from __future__ import annotations

from eva_runtime.phases.context import Context
from eva_runtime.spec import ALL_STEPS, steps_for

PHASES = ALL_STEPS


def run_phase(
    ctx: Context,
    phase: str,
    iteration: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    *,
    metrics_port: int | None = None,
    pushgateway: str | None = None,
) -> dict:
    """Run one step (a no-op when it is already complete) and return its summary.

    While it works the step's Prometheus metrics are current (and served on
    ``metrics_port`` when given); at the end they are pushed to ``pushgateway`` if set.
    """
    from eva_runtime.metrics import StepMetrics, activate
    from eva_runtime.timing import StepClock
    from eva_runtime.timing import activate as timing

    metrics = StepMetrics(
        run=ctx.run.name,
        namespace=ctx.run.namespace,
        iteration=iteration,
        step=phase,
        shard=shard,
    )
    if metrics_port is not None:
        metrics.serve(metrics_port)
    status = "failed"
    try:
        clock = StepClock()
        with activate(metrics), timing(clock):
            metrics.step_started()
            summary = _dispatch(ctx, phase, iteration, shard, num_shards)
        # This call's own time (a shard's, not the merged step's; ~0 for a step already done).
        metrics.step_parts({"phases": clock.breakdown(), "loads": clock.loads})
        status = "succeeded"
        return summary
    finally:
        metrics.step_finished(status)
        if pushgateway:
            metrics.push(pushgateway)
        if metrics_port is not None:
            metrics.stop()


def _dispatch(ctx: Context, phase: str, iteration: int, shard: int, num_shards: int) -> dict:
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
    if phase == "benchmark":
        from eva_runtime.phases.benchmark import run_benchmark

        return run_benchmark(ctx, iteration)
    raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")


__all__ = ["PHASES", "Context", "run_phase", "steps_for"]
