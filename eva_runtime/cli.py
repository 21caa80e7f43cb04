"""The ``eva`` command.

  eva validate FILE...             check manifests; every error at once, with its field
  eva run FILE [--workdir DIR]     all iterations on this machine; resumes after a stop
  eva phase STEP [--spec FILE] --run-dir DIR --iteration T [--shard I --num-shards N]
                                   one step (what a Kubernetes Job runs)
  eva summary RUN_DIR              the per-iteration table of a run directory
  eva sweep FILE --seeds 42,1,2 --set PATH=V1,V2 [--set ...] (--workdir DIR | --emit DIR)
                                   a grid of cells x seeds, each an ordinary run
  eva sweep report DIR [-o FILE.html]
                                   mean, standard error and paired differences per cell
  eva bench SUITE --model REF --questions FILE [--answers FILE] --judge-base-url URL
            --judge-model NAME [--judge-api-key-env VAR] [--out DIR]
                                   one judged benchmark (arena-hard, mt-bench, alpaca-eval)
  eva crd [-o FILE]                the EvaRun CustomResourceDefinition, from the spec model

Errors a user can cause print one message and exit 2, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from eva_runtime.errors import EvaError
from eva_runtime.spec import (
    ALL_STEPS,
    BENCH_SUITES,
    EvaRun,
    SpecError,
    load_run,
    load_runs,
    sharded,
)


def _fail(message: str) -> None:
    click.secho("error: ", fg="red", err=True, nl=False)
    click.echo(message, err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eva-platform")
def main() -> None:
    """eva: open-ended RLHF by asymmetric self-play (arXiv 2411.00062)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own bars show each step's progress; the libraries' per-file bars are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check EvaRun manifests (not whether the models and files they name are reachable)."""
    bad = 0
    for f in files:
        try:
            runs = load_runs(f)
        except SpecError as exc:
            bad += 1
            click.echo(f"{f}: invalid", err=True)
            for e in exc.errors:
                click.echo(f"  {e}", err=True)
            continue
        for r in runs:
            click.echo(f"{f}: EvaRun {r.namespace}/{r.name} is valid")
    if bad:
        sys.exit(1)


def _monitoring_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--pushgateway",
        envvar="EVA_PUSHGATEWAY_URL",
        default=None,
        help="Push each step's metrics here at its end [env EVA_PUSHGATEWAY_URL].",
    )(fn)
    return click.option(
        "--metrics-port",
        envvar="EVA_METRICS_PORT",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve Prometheus /metrics on this port while a step runs [env EVA_METRICS_PORT].",
    )(fn)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Artifact root (default: spec.storage.uri, else ./eva-runs).",
)
@click.option("--iterations", type=int, default=None, help="Override spec.iterations.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
@click.option(
    "--no-warm",
    is_flag=True,
    help="Load the models afresh in every step instead of keeping the policy and the reward "
    "model loaded between steps (less memory held, more loading).",
)
@_monitoring_options
def run(
    file: str,
    workdir: str | None,
    iterations: int | None,
    no_tracking: bool,
    no_warm: bool,
    metrics_port: int | None,
    pushgateway: str | None,
) -> None:
    """Run every iteration and step of FILE on this machine."""
    from eva_runtime.runner import run_all

    try:
        r = load_run(file)
        if iterations is not None:
            r = _with_iterations(r, iterations)
        run_all(
            r,
            workdir,
            tracking=not no_tracking,
            metrics_port=metrics_port,
            pushgateway=pushgateway,
            warm=not no_warm,
        )
    except SpecError as exc:
        _fail(str(exc))
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to continue", err=True)
        sys.exit(130)


@main.command()
@click.argument("step", type=click.Choice(ALL_STEPS))
@click.option(
    "--spec",
    "spec_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="The EvaRun manifest (default: the YAML text in $EVA_SPEC_YAML, as step pods get it).",
)
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@click.option("--iteration", type=int, default=0, show_default=True)
@click.option("--shard", type=int, default=None, help="This worker's shard (generation steps).")
@click.option("--num-shards", type=int, default=None, help="Default: spec.generation.shards.")
@click.option(
    "--termination-log",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the summary (or the error) here as compact JSON: a pod's termination "
    "message, which the operator reads.",
)
@_monitoring_options
def phase(
    step: str,
    spec_file: str | None,
    run_dir: str,
    iteration: int,
    shard: int | None,
    num_shards: int | None,
    termination_log: str | None,
    metrics_port: int | None,
    pushgateway: str | None,
) -> None:
    """Run one step; a complete step is a no-op. Prints the step's summary as JSON.

    In an Indexed Job the shard defaults to $JOB_COMPLETION_INDEX.
    """
    from eva_runtime.artifacts import RunDir
    from eva_runtime.phases import Context, run_phase

    try:
        r = _phase_spec(spec_file)
        if not 0 <= iteration < r.spec.iterations:
            raise EvaError(
                f"--iteration {iteration}: the spec has iterations 0..{r.spec.iterations - 1}"
            )
        n = r.spec.generation.shards if num_shards is None else num_shards
        if n < 1:
            raise EvaError(f"--num-shards {n}: must be at least 1")
        index = os.environ.get("JOB_COMPLETION_INDEX", "0")
        if shard is None and not index.isdigit():
            raise EvaError(f"$JOB_COMPLETION_INDEX {index!r}: not a shard number")
        i = shard if shard is not None else int(index)
        if not sharded(step) and (shard or (num_shards or 1) > 1):
            raise EvaError(f"--shard/--num-shards apply to generation steps, not {step}")
        if not sharded(step):
            n, i = 1, 0
        if not 0 <= i < n:
            raise EvaError(f"--shard {i}: must be in 0..{n - 1} (--num-shards {n})")
        rd = RunDir(run_dir)
        from eva_runtime.runner import check_recorded

        check_recorded(r, Path(run_dir))
        _record_manifest(r, Path(run_dir))
        ctx = Context(run=r, run_dir=rd)
        summary = run_phase(
            ctx, step, iteration, i, n, metrics_port=metrics_port, pushgateway=pushgateway
        )
        run_id = None
        if r.spec.tracking.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            run_id = _track(r, Path(run_dir))
    except (EvaError, ValueError) as exc:
        if termination_log:
            _write_termination(termination_log, {"step": step, "error": str(exc)})
        _fail(str(exc))
    except Exception as exc:  # a crash (out of memory, a bug): say so, keep the traceback
        if termination_log:
            _write_termination(
                termination_log, {"step": step, "error": f"{type(exc).__name__}: {exc}"}
            )
        raise
    if termination_log:
        whole = step == "prepare" or rd.step(iteration, step).complete()
        message = {
            "step": step,
            "iteration": iteration,
            "scope": "step" if whole else "shard",
            "shard": i,
            "counts": summary.get("counts", {}),
            "seconds": (summary.get("timings") or {}).get("seconds"),
            # Where the step's time went (eva_runtime.timing): the run's status keeps it.
            "phases": (summary.get("timings") or {}).get("phases"),
            "loads": (summary.get("timings") or {}).get("loads"),
        }
        if step == "create":
            message["digests"] = {"mixed.parquet": summary.get("digests", {}).get("mixed.parquet")}
        if step == "train":
            message["model"] = str(rd.step(iteration, "train").path / "model")
        if run_id:
            message["mlflowRunId"] = run_id
        _write_termination(termination_log, message)
    click.echo(json.dumps(summary.get("counts", {}), sort_keys=True))


def _phase_spec(spec_file: str | None) -> EvaRun:
    if spec_file:
        return load_run(spec_file)
    text = os.environ.get("EVA_SPEC_YAML")
    if not text:
        raise EvaError("--spec: give a manifest file (or its YAML text in $EVA_SPEC_YAML)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "EVA_SPEC_YAML.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_run(path)
        except SpecError as exc:
            raise EvaError(str(exc).replace(str(path), "$EVA_SPEC_YAML")) from None


def _record_manifest(run: EvaRun, run_dir: Path) -> None:
    """Keep the manifest beside the artifacts, so `eva report` and `eva track` can read it."""
    from eva_runtime.artifacts import RunDir
    from eva_runtime.spec import dump_run

    RunDir(run_dir).write_manifest(dump_run(run))


def _write_termination(path: str, message: dict) -> None:
    """Kubernetes keeps at most 4096 bytes of a termination message: drop detail to fit."""
    text = json.dumps(message, sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > 4000:
        message = {k: v for k, v in message.items() if k not in ("counts", "digests")}
        if "error" in message:
            message["error"] = str(message["error"])[-3500:]
        text = json.dumps(message, sort_keys=True, separators=(",", ":"), default=str)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        click.echo(f"warning: cannot write the termination message to {path}: {exc}", err=True)


def _track(run: EvaRun, run_dir: Path) -> str | None:
    """Log what is complete to MLflow; the parent run's id (None when MLflow is unreachable)."""
    from eva_runtime.progress import warn
    from eva_runtime.tracking import Tracker, TrackingUnavailable

    try:
        tracker = Tracker(run, run_dir)
        tracker.sync()
        return tracker.parent_run_id()
    except TrackingUnavailable as exc:
        warn(str(exc))
        return None


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--finish", is_flag=True, help="Also end the MLflow runs (status FINISHED).")
def track(run_dir: str, finish: bool) -> None:
    """Log every complete step of RUN_DIR not yet in MLflow (e.g. after an outage)."""
    from eva_runtime.tracking import Tracker, TrackingUnavailable

    try:
        r = load_run(Path(run_dir) / "evarun.yaml")
        tracker = Tracker(r, Path(run_dir))
        logged = tracker.sync()
        if finish:
            tracker.finish("FINISHED")
    except TrackingUnavailable as exc:
        _fail(str(exc))
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(logged, sort_keys=True, default=str))
    click.echo(tracker.ui_command())


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Default: RUN_DIR/report.html.",
)
def report(run_dir: str, output: str | None) -> None:
    """Write one self-contained HTML report of a run (plots inline)."""
    from eva_runtime.report import write_report

    try:
        out = write_report(run_dir, output)
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    click.echo(str(out))


@main.command()
@click.argument("run_a", type=click.Path(file_okay=False, exists=True))
@click.argument("run_b", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default="compare.html", show_default=True
)
def compare(run_a: str, run_b: str, output: str) -> None:
    """Draw two runs on the same axes (e.g. eva against the baseline)."""
    from eva_runtime.report import write_compare

    try:
        out = write_compare(run_a, run_b, output)
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    click.echo(str(out))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
def summary(run_dir: str) -> None:
    """Print the per-iteration table of a run directory."""
    from eva_runtime.artifacts import RunDir
    from eva_runtime.summary import print_summary, summary_rows

    rd = RunDir(run_dir)
    try:
        if not (Path(run_dir) / "evarun.yaml").exists() and not rd.iterations():
            raise EvaError(f"{run_dir}: not a run directory (no evarun.yaml, no iter-* folders)")
        rows = summary_rows(rd, len(rd.iterations()))
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    print_summary(rows, Path(run_dir))


class _SweepGroup(click.Group):
    """``eva sweep FILE ...`` runs a sweep; ``eva sweep report DIR`` renders one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return ("" if name == "run" else name), cmd, rest  # usage reads `eva sweep FILE`

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        run = self.commands["run"]
        with click.Context(run, info_name=ctx.info_name, parent=ctx.parent) as sub:
            run.format_help(sub, formatter)
        formatter.write_paragraph()
        formatter.write_text("eva sweep report DIR [-o FILE.html]: render a sweep (see --help).")


@main.group(cls=_SweepGroup)
def sweep() -> None:
    """Sweeps over seeds and spec variants: eva sweep FILE ..., eva sweep report DIR."""


@sweep.command("run", hidden=True)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--seeds", required=True, help="Comma-separated seeds, e.g. 42,1,2.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=V1,V2",
    help="A spec field (camelCase, e.g. creator.enabled) and its values; repeat for a grid.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="The sweep folder (default: ./eva-sweeps/<name>).",
)
@click.option(
    "--emit",
    type=click.Path(file_okay=False),
    default=None,
    help="Write one EvaRun manifest per cell and seed here instead of running.",
)
@click.option("--name", default=None, help="The sweep's name (default: the manifest's name).")
@click.option("--iterations", type=int, default=None, help="Override spec.iterations.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
def sweep_run(
    file: str,
    seeds: str,
    sets: tuple[str, ...],
    workdir: str | None,
    emit: str | None,
    name: str | None,
    iterations: int | None,
    no_tracking: bool,
) -> None:
    """Run (or --emit) the grid of --set values x --seeds over the manifest FILE."""
    from eva_runtime.sweep import emit_sweep, grid, parse_seeds, parse_set, run_sweep

    try:
        if workdir and emit:
            raise EvaError("--workdir and --emit: give one (run here, or write manifests)")
        base = load_run(file)
        if iterations is not None:
            base = _with_iterations(base, iterations)
        seed_list = parse_seeds(seeds)
        cells = grid([parse_set(s) for s in sets])
        sweep_name = name or base.name
        if emit:
            written = emit_sweep(base, cells, seed_list, Path(emit), sweep=sweep_name)
            click.echo(f"wrote {len(written)} EvaRun manifests to {emit} (kubectl apply -f {emit})")
            return
        root = Path(workdir or Path("eva-sweeps") / sweep_name)
        failures = run_sweep(
            base, cells, seed_list, root, sweep=sweep_name, tracking=not no_tracking
        )
    except SpecError as exc:
        _fail(str(exc))
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to continue", err=True)
        sys.exit(130)
    click.echo(f"sweep folder: {root} (eva sweep report {root})")
    if failures:
        for cell, seed, message in failures:
            click.echo(f"failed: cell {cell.name}, seed {seed}: {message}", err=True)
        sys.exit(1)


@sweep.command("report")
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="The HTML page (default: DIR/sweep-report.html; .md and .csv are written beside it).",
)
@click.option(
    "--reference",
    default=None,
    help="The cell others are compared with (its name, e.g. creator.enabled=false; default: "
    "the one cell with the creator off, else the first).",
)
def sweep_report(sweep_dir: str, output: str | None, reference: str | None) -> None:
    """Per cell: mean and standard error over seeds; paired differences with the reference.

    The last line on stdout is one JSON object (for scripts).
    """
    from eva_runtime.sweep_report import write_sweep_report

    try:
        summary, paths = write_sweep_report(sweep_dir, output, reference=reference)
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    for p in paths:
        click.echo(str(p))
    click.echo(json.dumps(summary, sort_keys=True, default=str))


@main.command()
@click.argument("suite", type=click.Choice(list(BENCH_SUITES)))
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="A model folder, hub id, .gguf, or a run directory (its latest policy; RUN_DIR:N "
    "the policy after iteration N, RUN_DIR:base the starting one).",
)
@click.option("--questions", required=True, type=click.Path(dir_okay=False), help="Question file.")
@click.option(
    "--answers",
    type=click.Path(dir_okay=False),
    default=None,
    help="arena-hard: the baseline's answers; alpaca-eval: reference outputs; mt-bench: "
    "reference answers.",
)
@click.option("--judge-base-url", default=None, help="The judge's OpenAI-compatible server.")
@click.option("--judge-model", default=None, help="The model name the judge server expects.")
@click.option(
    "--judge-api-key-env", default=None, help="Environment variable holding the judge's key."
)
@click.option("--judge-model-path", default=None, help="A local judge model instead of a server.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Answers, judgments and result.json (default: eva-bench/SUITE-MODEL).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N questions.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "transformers", "vllm"]),
    default="auto",
    show_default=True,
    help="Backend that runs the model (and a local judge).",
)
@click.option(
    "--max-new-tokens", type=click.IntRange(1, 1_048_576), default=1024, show_default=True
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 5),
    default=None,
    help="Answer temperature (default: 0; mt-bench: its per-category temperatures).",
)
@click.option(
    "--style-control", is_flag=True, help="arena-hard: length and markdown as covariates."
)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds per judge request.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Judge request retries (429, 5xx, timeouts).",
)
@click.option(
    "--parse-retries",
    type=click.IntRange(0, 20),
    default=2,
    show_default=True,
    help="Extra asks for a reply without a verdict.",
)
@click.option(
    "--judge-max-new-tokens",
    type=click.IntRange(1, 1_048_576),
    default=1024,
    show_default=True,
    help="Tokens per judge reply.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
def bench(**options: Any) -> None:
    """Score a model on one judged benchmark: arena-hard, mt-bench or alpaca-eval.

    The last line on stdout is one JSON object (suite, score, ci_low, ci_high, judged,
    excluded, ...). Answers and judgments are kept in --out: running again asks only for
    what is missing.
    """
    from eva_runtime.bench.cli import run_bench_command

    try:
        # The options, typed and named once, are run_bench_command's parameters.
        result = run_bench_command(**options)
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(result, sort_keys=True))
    if not result.get("judged"):
        sys.exit(1)  # no score: nothing could be judged (the counts above say why)


def _with_iterations(run: EvaRun, iterations: int) -> EvaRun:
    from eva_runtime.spec import parse_run

    doc = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"]["iterations"] = iterations
    try:
        return parse_run(doc, "--iterations")
    except SpecError as exc:
        raise EvaError(str(exc)) from None


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the YAML here instead of printing it.",
)
def crd(output: str | None) -> None:
    """Print the EvaRun CustomResourceDefinition (generated from the spec model)."""
    from eva_runtime.crd import CRDError, crd_yaml

    try:
        text = crd_yaml()
    except CRDError as exc:
        _fail(str(exc))
    if output is None:
        click.echo(text, nl=False)
        return
    from eva_runtime.artifacts import write_output

    try:
        write_output(output, text.encode("utf-8"))
    except EvaError as exc:
        _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
