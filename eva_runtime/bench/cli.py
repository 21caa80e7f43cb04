"""What ``eva bench`` does between the command line and ``run_bench``: resolve the model
reference (a run directory included), build the judge, pick the output folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from eva_runtime.bench.run import BenchConfig, brief, run_bench
from eva_runtime.errors import InputError, first_line


def resolve_policy(ref: str) -> tuple[str, str]:
    """(model path or id, a readable id) for ``ref``: a model, or ``RUN_DIR[:N|:base]``."""
    from eva_runtime.artifacts import MANIFEST, RunDir

    path, _, which = ref.rpartition(":") if re.search(r":(\d+|base)$", ref) else (ref, "", "")
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        if which:
            raise InputError(f"--model {ref}: {path} is not a run directory (no {MANIFEST})")
        from eva_runtime.models import check_model_reachable

        try:
            check_model_reachable(ref)
        except ValueError as exc:
            raise InputError(f"--model {ref}: {exc}") from None
        return ref, ref
    from eva_runtime.spec import SpecError, load_run

    try:
        run = load_run(folder / MANIFEST)
    except SpecError as exc:
        raise InputError(f"--model {ref}: the run's manifest cannot be read ({exc})") from None
    rd = RunDir(folder)
    trained = [t for t in rd.iterations() if rd.step(t, "train").complete()]
    if which == "base":
        return run.spec.policy.model, f"{ref}"
    if which:
        t = int(which)
        if t not in trained:
            raise InputError(f"--model {ref}: iteration {t} of {folder} has no trained policy")
    elif trained:
        t = trained[-1]
    else:
        return run.spec.policy.model, f"{ref} (base policy: nothing trained yet)"
    return str(rd.step(t, "train").path / "model"), f"{folder}:{t}"


def make_judge(
    *,
    base_url: str | None,
    model: str | None,
    api_key_env: str | None,
    model_path: str | None,
    backend: str = "auto",
    concurrency: int = 8,
    timeout: float = 120.0,
    max_retries: int = 5,
    max_tokens: int = 1024,
) -> Any:
    from eva_runtime.bench.judge import EndpointJudge, LocalJudge

    if model_path:
        if base_url or model:
            raise InputError("give --judge-model-path or --judge-base-url/--judge-model, not both")
        return LocalJudge(model_path, backend=backend, max_tokens=max_tokens)
    if not base_url or not model:
        raise InputError(
            "a judge is needed: --judge-base-url URL and --judge-model NAME (an OpenAI-"
            "compatible server), or --judge-model-path for a local model"
        )
    from eva_runtime.spec import OpenAIEndpoint

    try:
        OpenAIEndpoint(base_url=base_url, model=model)
    except ValueError as exc:
        detail = str(exc).splitlines()[-2].strip() if "\n" in str(exc) else str(exc)
        raise InputError(f"--judge-base-url {base_url!r}: {detail}") from None
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if key is None:
            raise InputError(f"--judge-api-key-env: environment variable {api_key_env} is not set")
    return EndpointJudge(
        model,
        base_url,
        api_key=key,
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        max_tokens=max_tokens,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[-60:] or "model"


def run_bench_command(
    *,
    suite: str,
    model_ref: str,
    questions: str,
    answers: str | None,
    judge_base_url: str | None,
    judge_model: str | None,
    judge_api_key_env: str | None,
    judge_model_path: str | None,
    out: str | None,
    limit: int | None,
    backend: str,
    max_new_tokens: int,
    temperature: float | None,
    style_control: bool,
    concurrency: int,
    timeout: float,
    max_retries: int,
    parse_retries: int,
    seed: int,
    judge_max_new_tokens: int = 1024,
) -> dict[str, Any]:
    from eva_runtime.bench.run import load_inputs

    if style_control and suite != "arena-hard":
        raise InputError(f"--style-control: only arena-hard has style control (suite {suite})")
    cfg = BenchConfig(
        suite=suite,
        questions=questions,
        answers=answers,
        limit=limit,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        style_control=style_control,
        parse_retries=parse_retries,
        seed=seed,
    )
    load_inputs(cfg)  # bad files fail before a model or a judge is loaded
    model_path, model_id = resolve_policy(model_ref)
    judge = make_judge(
        base_url=judge_base_url,
        model=judge_model,
        api_key_env=judge_api_key_env,
        model_path=judge_model_path,
        backend=backend,
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        max_tokens=judge_max_new_tokens,
    )
    folder = Path(out) if out else Path("eva-bench") / f"{suite}-{_slug(model_id)}"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder}: exists and is not a folder")

    def generator() -> Any:
        from eva_runtime.backends import make_generator

        try:
            return make_generator(backend, model_path)
        except OSError as exc:  # transformers' "not found / cannot download" errors
            raise InputError(f"--model {model_ref}: cannot be loaded ({first_line(exc)})") from None

    try:
        result = run_bench(
            cfg, model_id=model_id, make_generator=generator, judge=judge, out=folder
        )
    finally:
        judge.close()
    return {**brief(result), "out": str(folder)}
