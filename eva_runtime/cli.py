"""The ``eva`` command.

  eva validate FILE...             check manifests; every error at once, with its field
  eva run FILE [--workdir DIR]     all iterations on this machine; resumes after a stop
  eva phase STEP --spec FILE --run-dir DIR --iteration T [--shard I --num-shards N]
                                   one step (what a Kubernetes Job runs)
  eva summary RUN_DIR              the per-iteration table of a run directory

Errors a user can cause print one message and exit 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from eva_runtime.errors import EvaError
from eva_runtime.spec import SpecError, load_run, load_runs

PHASE_NAMES = ("prepare", "generate", "create", "generate-evolved", "train", "evaluate")


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


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Artifact root (default: spec.storage.uri, else ./eva-runs).",
)
@click.option("--iterations", type=int, default=None, help="Override spec.iterations.")
def run(file: str, workdir: str | None, iterations: int | None) -> None:
    """Run every iteration and step of FILE on this machine."""
    from eva_runtime.runner import run_all

    try:
        r = load_run(file)
        if iterations is not None:
            r.spec.iterations = iterations
        run_all(r, workdir)
    except SpecError as exc:
        _fail(str(exc))
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to continue", err=True)
        sys.exit(130)


@main.command()
@click.argument("step", type=click.Choice(PHASE_NAMES))
@click.option("--spec", "spec_file", required=True, type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@click.option("--iteration", type=int, default=0, show_default=True)
@click.option("--shard", type=int, default=None, help="This worker's shard (generation steps).")
@click.option("--num-shards", type=int, default=None, help="Default: spec.generation.shards.")
def phase(
    step: str,
    spec_file: str,
    run_dir: str,
    iteration: int,
    shard: int | None,
    num_shards: int | None,
) -> None:
    """Run one step; a complete step is a no-op. Prints the step's summary as JSON.

    In an Indexed Job the shard defaults to $JOB_COMPLETION_INDEX.
    """
    import json

    from eva_runtime.artifacts import RunDir
    from eva_runtime.phases import Context, run_phase

    try:
        r = load_run(spec_file)
        if not 0 <= iteration < r.spec.iterations:
            raise EvaError(
                f"--iteration {iteration}: the spec has iterations 0..{r.spec.iterations - 1}"
            )
        n = num_shards or r.spec.generation.shards
        i = shard if shard is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
        if not step.startswith("generate") and (shard or (num_shards or 1) > 1):
            raise EvaError(f"--shard/--num-shards apply to generation steps, not {step}")
        ctx = Context(run=r, run_dir=RunDir(run_dir))
        summary = run_phase(ctx, step, iteration, i, n)
    except (EvaError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps(summary.get("counts", {}), sort_keys=True))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
def summary(run_dir: str) -> None:
    """Print the per-iteration table of a run directory."""
    from eva_runtime.artifacts import RunDir
    from eva_runtime.runner import print_summary, summary_rows

    iterations = sum(1 for p in Path(run_dir).glob("iter-*") if p.is_dir())
    print_summary(summary_rows(RunDir(run_dir), iterations), Path(run_dir))


if __name__ == "__main__":  # pragma: no cover
    main()
