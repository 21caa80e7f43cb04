"""benchmark: every ``evaluation.benchmarks`` entry on the iteration's new policy, judged by
a model that was not trained against (the held-out reward is the trained-on reward model's).

Iteration 0 also benchmarks the base policy, once. Each benchmark writes
``<name>/policy/`` (and ``<name>/base/``) with the model's answers, every judgment and
``result.json`` (see ``eva_runtime.bench.run``). An interrupted step keeps those files: on
the next attempt the model answers and the judge is asked only for what is missing.

Counts (flat, so they reach the step summary, MLflow, the status history and Prometheus):
``bench/<name>/score``, ``ci_low``, ``ci_high``, ``judged``, ``excluded``, ``errors`` and the
suite's extras (``turn_1``..., ``win_rate``); in iteration 0 the same with ``base_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eva_runtime.errors import StepError
from eva_runtime.metrics import current as current_metrics
from eva_runtime.phases.context import Context
from eva_runtime.progress import note
from eva_runtime.seeds import derive_seed
from eva_runtime.spec import BenchmarkSpec
from eva_runtime.status import bench_key

# Per benchmark, the result fields copied into the counts (the rest are in result.json).
RESULT_FIELDS = (
    "score",
    "ci_low",
    "ci_high",
    "judged",
    "excluded",
    "errors",
    "turn_1",
    "turn_2",
    "win_rate",
)


def make_bench_judge(ctx: Context, b: BenchmarkSpec) -> Any:
    from eva_runtime.bench.judge import EndpointJudge, LocalJudge

    j = b.judge
    if j.endpoint is not None:
        return EndpointJudge(
            j.endpoint.model,
            j.endpoint.base_url,
            api_key=ctx._endpoint_key(j.endpoint),
            concurrency=j.concurrency,
            timeout=j.timeout_s,
            max_retries=j.max_retries,
            max_tokens=j.max_new_tokens,
        )
    assert j.model is not None
    i = ctx.spec.evaluation.benchmarks.index(b)
    model = ctx.model_path(j.model, f"evaluation.benchmarks[{i}].judge.model")
    return LocalJudge(model, backend=j.backend, max_tokens=j.max_new_tokens)


def run_benchmark(ctx: Context, iteration: int) -> dict:
    from eva_runtime.bench.run import BenchConfig, run_bench

    rd = ctx.run_dir
    sd = rd.step(iteration, "benchmark")
    if not sd.begin(resume=True):
        return sd.summary()
    rd.require(rd.step(iteration, "train"), f"the train step of iteration {iteration}")
    benchmarks = ctx.spec.evaluation.benchmarks
    if not benchmarks:
        raise StepError("spec.evaluation.benchmarks is empty: this run has no benchmark step")
    metrics = current_metrics()
    counts: dict[str, Any] = {"benchmarks": len(benchmarks), "responses": 0, "tokens": 0}
    policies = [("policy", str(rd.step(iteration, "train").path / "model"), iteration + 1)]
    if iteration == 0:
        policies.insert(0, ("base", ctx.policy_path(0), 0))
    for b in benchmarks:
        assert b.name is not None
        cfg = BenchConfig(
            suite=b.suite,
            questions=b.questions,
            answers=b.answers,
            limit=b.limit,
            temperature=b.temperature,
            max_new_tokens=b.max_new_tokens,
            style_control=b.style_control,
            parse_retries=b.judge.parse_retries,
            seed=derive_seed(ctx.spec.seed, "benchmark", b.name),
        )
        judge = make_bench_judge(ctx, b)
        try:
            for which, path, policy_iteration in policies:

                def generator(path: str = path, t: int = policy_iteration) -> Any:
                    return ctx.policy_generator(path, t)

                result = run_bench(
                    cfg,
                    model_id=path,
                    make_generator=generator,
                    judge=judge,
                    out=sd.path / b.name / which,
                    label=f"iter {iteration} benchmark {b.name} ({which})",
                )
                metrics.benchmark_result(b.name, "base" if which == "base" else "new", result)
                for field in RESULT_FIELDS:
                    if field in result:
                        counts[bench_key(b.name, field, which == "base")] = result[field]
                counts["tokens"] += int(result.get("answer_tokens") or 0)
                counts["responses"] += int(result.get("answered") or 0)
        finally:
            judge.close()
    note(
        f"iter {iteration} benchmark: "
        + ", ".join(
            f"{b.name} {_fmt(counts.get(bench_key(str(b.name), 'score')))}" for b in benchmarks
        )
    )
    return sd.finish(counts)


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and value == value else "n/a"


def results(run_dir: Path, iteration: int, name: str, which: str = "policy") -> dict | None:
    """A benchmark's ``result.json`` in a run directory (None when it has none)."""
    from eva_runtime.artifacts import read_json
    from eva_runtime.bench.run import RESULT

    path = Path(run_dir) / f"iter-{iteration}" / "benchmark" / name / which / RESULT
    return read_json(path) if path.is_file() else None
