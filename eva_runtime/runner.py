"""The local runner: every step of every iteration in order, on this machine.

A step that is complete is skipped, so running again after Ctrl-C or a kill continues
from the last complete step. Before any work starts the runner checks that what the
spec names is reachable from here (prompt file, models, reward function), so a typo
fails in a second, not after an hour of generation.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_runtime.artifacts import RunDir
from eva_runtime.errors import EvaError, InputError
from eva_runtime.phases import Context, run_phase
from eva_runtime.phases.warm import WarmModels
from eva_runtime.progress import console, note, warn
from eva_runtime.spec import EvaRun, iteration_steps, mutable_fields_text, sharded, spec_changes
from eva_runtime.summary import print_summary, summary_rows


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]


def run_dir_for(run: EvaRun, workdir: str | Path | None) -> Path:
    root = workdir or run.spec.storage.uri or "eva-runs"
    root = str(root)
    if "://" in root and not root.startswith("file://"):
        raise InputError(
            f"storage.uri {root!r}: the local runner writes to a local folder; "
            "pass --workdir or use a path"
        )
    return Path(root.removeprefix("file://")) / run.namespace / run.name


def preflight(run: EvaRun) -> None:
    """Fail fast on what this machine cannot reach; load nothing heavy."""
    from eva_runtime.models import check_model_reachable

    s = run.spec
    problems: list[str] = []
    src = s.prompts.source
    if "://" not in src and not Path(src).exists():
        problems.append(f"spec.prompts.source: {src} not found")
    for m in s.model_refs():
        try:
            check_model_reachable(m.ref)
        except ValueError as exc:
            problems.append(f"spec.{m.field}: {exc}")
            continue
        try:
            check_model_reachable(m.ref, revision=m.revision)
        except ValueError as exc:
            problems.append(f"spec.{m.revision_field}: {exc}")
    if s.reward_model.function:  # type python, or pairwise with preference python
        from eva_runtime.backends.functions import load_function

        try:
            load_function(s.reward_model.function)
        except ValueError as exc:
            problems.append(f"spec.rewardModel.function: {exc}")
    if s.generation.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("spec.generation.backend: vllm is not installed (pip install '.[gpu]')")
    for ep_field, ep in s.endpoints():
        if ep.api_key_env and ep.api_key_env not in os.environ:
            problems.append(
                f"spec.{ep_field}.apiKeyEnv: environment variable {ep.api_key_env} is not set"
            )
    for i, b in enumerate(s.evaluation.benchmarks):
        where = f"spec.evaluation.benchmarks[{i}]"
        for field, file in (("questions", b.questions), ("answers", b.answers)):
            if file and not Path(file).is_file():
                problems.append(f"{where}.{field}: {file} not found")
    if problems:
        raise EvaError("cannot start the run:\n" + "\n".join(f"  {p}" for p in problems))


def check_recorded(run: EvaRun, path: Path) -> None:
    """Refuse to work in a run directory started with another spec, before anything is
    written: its complete steps would not match (``eva run`` and ``eva phase`` both ask)."""
    recorded = path / "evarun.yaml"
    if not recorded.exists():
        return
    from eva_runtime.spec import SpecError, load_run

    try:
        old = load_run(recorded)
    except SpecError as exc:
        raise EvaError(
            f"{recorded}: the run directory's manifest cannot be read ({exc}); restore it or "
            "use another --workdir"
        ) from None
    changed = spec_changes(old, run)
    if changed:
        raise EvaError(
            f"{path} holds this run with a different spec ({', '.join(changed)}); its "
            "complete steps would not match. Use another --workdir or metadata.name, or "
            f"delete the folder (only {mutable_fields_text()} may change between runs)"
        )
    done = len(RunDir(path).iterations())
    if run.spec.iterations < old.spec.iterations and run.spec.iterations < done:
        raise EvaError(
            f"spec.iterations {run.spec.iterations}: {path} already holds iterations "
            f"0..{done - 1}; iterations may only be raised (it is {old.spec.iterations})"
        )


def run_all(
    run: EvaRun,
    workdir: str | Path | None = None,
    *,
    check: bool = True,
    tracking: bool = True,
    metrics_port: int | None = None,
    pushgateway: str | None = None,
    run_dir: Path | None = None,
    warm: bool = True,
) -> RunResult:
    """Every step of every iteration; MLflow gets each step as it completes.

    ``warm`` keeps the policy's generator and the reward model loaded from one step to the
    next (see ``phases/warm.py``) where generation runs in this process with transformers;
    a vLLM engine claims most of the GPU, so with vLLM each step still loads its own.

    Tracking never stops the run: when MLflow is unreachable the step is logged at the
    next sync (the run directory is the buffer), and ``eva track RUN_DIR`` flushes it later.
    ``run_dir`` (default: under ``workdir``, see :func:`run_dir_for`) is where the artifacts
    go; a sweep puts each run in its cell's folder.
    """
    if check:
        preflight(run)
    path = run_dir if run_dir is not None else run_dir_for(run, workdir)
    check_recorded(run, path)
    path.mkdir(parents=True, exist_ok=True)
    RunDir(path).write_manifest(_manifest(run))
    ctx = Context(run=run, run_dir=RunDir(path))
    if warm and run.spec.generation.backend != "openai" and ctx.local_backend() == "transformers":
        ctx.warm = WarmModels()
    tracker = _tracker(run, path) if tracking else None
    note(f"eva run {run.namespace}/{run.name}: {run.spec.iterations} iterations in {path}")

    def step(phase: str, t: int = 0, shard: int = 0, shards: int = 1) -> None:
        run_phase(ctx, phase, t, shard, shards, metrics_port=metrics_port, pushgateway=pushgateway)
        _sync(tracker)

    try:
        step("prepare")
        for t in range(run.spec.iterations):
            for name in iteration_steps(run.spec):
                if ctx.run_dir.step(t, name).complete():
                    continue
                if name == "train" and ctx.warm is not None:
                    ctx.warm.release()  # training wants the memory; evaluate loads the new policy
                if sharded(name):
                    n = run.spec.generation.shards
                    for i in range(n):
                        step(name, t, i, n)
                else:
                    step(name, t)
    except KeyboardInterrupt:
        if tracker is not None:
            _finish(tracker, "KILLED")
        raise
    except BaseException:
        if tracker is not None:
            _finish(tracker, "FAILED")
        raise
    finally:
        if ctx.warm is not None:
            ctx.warm.release()
    _sync(tracker)
    if tracker is not None:
        _finish(tracker, "FINISHED")
    if pushgateway:
        _forget_pushed(run, pushgateway)
    rows = summary_rows(ctx.run_dir, run.spec.iterations)
    print_summary(rows, path)
    if tracker is not None:
        console.print(f"mlflow: {tracker.ui_command()}")
    return RunResult(run_dir=path, rows=rows)


def _tracker(run: EvaRun, path: Path) -> Any:
    try:
        from eva_runtime.tracking import Tracker

        return Tracker(run, path)
    except ImportError as exc:  # the base install has no mlflow
        warn(f"MLflow tracking is off ({exc}); install the train extra to enable it")
        return None
    except EvaError as exc:  # e.g. unreachable at start: the run goes on, `eva track` later
        warn(f"MLflow tracking is off for this run: {exc}")
        return None


def _sync(tracker: Any) -> None:
    if tracker is None:
        return
    from eva_runtime.tracking import TrackingUnavailable

    try:
        tracker.sync()
    except TrackingUnavailable as exc:
        warn(f"{exc}")


def _finish(tracker: Any, status: str) -> None:
    from eva_runtime.tracking import TrackingUnavailable

    try:
        tracker.finish(status)
    except TrackingUnavailable as exc:
        warn(f"{exc}")


def _forget_pushed(run: EvaRun, gateway: str) -> None:
    """A finished run's groups would sit in the Pushgateway forever: delete them."""
    from eva_runtime.metrics import delete_run_groups

    groups = [(0, "prepare", 0)]
    for t in range(run.spec.iterations):
        for name in iteration_steps(run.spec):
            shards = run.spec.generation.shards if sharded(name) else 1
            groups.extend((t, name, i) for i in range(shards))
    delete_run_groups(gateway, run=run.name, namespace=run.namespace, groups=groups)


def _manifest(run: EvaRun) -> str:
    from eva_runtime.spec import dump_run

    return dump_run(run)
