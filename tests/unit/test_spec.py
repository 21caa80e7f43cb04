from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eva_runtime.spec import EvaRun, SpecError, dump_run, load_run, parse_run

ROOT = Path(__file__).resolve().parents[2]


def manifest(**spec: object) -> dict:
    base = {
        "policy": {"model": "org/model"},
        "prompts": {"source": "p.jsonl"},
        "rewardModel": {"model": "org/rm"},
    }
    base.update(spec)
    return {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": "r1"},
        "spec": base,
    }


def test_defaults_follow_the_paper() -> None:
    s = parse_run(manifest()).spec
    assert s.iterations == 3 and s.seed == 42
    assert s.generation.samples_per_prompt == 6
    assert (s.generation.temperature, s.generation.top_p, s.generation.max_new_tokens) == (
        0.7,
        0.9,
        2048,
    )
    assert s.creator.informativeness == "gap" and s.creator.sampling == "importanceWeighted"
    assert s.creator.sample_fraction == 0.25 and s.creator.buffer_ratio == 0.2
    assert s.creator.evolve.variants_per_prompt == 4
    assert (s.creator.evolve.evolver.temperature, s.creator.evolve.evolver.max_new_tokens) == (
        0.88,
        666,
    )
    assert (s.solver.beta, s.solver.learning_rate, s.solver.epochs) == (0.05, 5e-7, 2.0)
    assert s.solver.effective_batch_size == 64
    assert s.reward_model.type == "classifier"


def test_every_error_is_reported_at_once_with_its_field_path() -> None:
    doc = manifest(
        iterations=0,
        creator={"sampleFraction": 1.5, "bufferRatio": 1.0, "sampling": "topk"},
        generation={"temprature": 0.5},
        rewardModel={"type": "python", "function": "no_colon"},
    )
    doc["metadata"]["name"] = "Bad_Name"
    with pytest.raises(SpecError) as exc:
        parse_run(doc, "f.yaml")
    errors = exc.value.errors
    expected = [
        "metadata.name: must be a DNS label",
        "spec.iterations: must be greater than or equal to 1",
        "spec.creator.sampleFraction: must be in (0, 1]",
        "spec.creator.bufferRatio: must be in [0, 1)",
        "spec.creator.sampling: must be one of",
        "spec.generation.temprature: unknown field",
        "spec.rewardModel.function: 'no_colon' is not of the form 'module:function'",
    ]
    for e in expected:
        assert any(line.startswith(e) for line in errors), (e, errors)
    assert len(errors) == len(expected)


def test_armo_needs_trust_remote_code() -> None:
    with pytest.raises(SpecError, match=r"spec.rewardModel.trustRemoteCode"):
        parse_run(manifest(rewardModel={"type": "armo", "model": "RLHFlow/ArmoRM-Llama3-8B-v0.1"}))
    ok = parse_run(manifest(rewardModel={"type": "armo", "model": "x/y", "trustRemoteCode": True}))
    assert ok.spec.reward_model.trust_remote_code


def test_wrong_kind_and_version_are_named() -> None:
    doc = manifest()
    doc["kind"], doc["apiVersion"] = "Job", "batch/v1"
    with pytest.raises(SpecError) as exc:
        parse_run(doc)
    assert any(e.startswith("apiVersion: must be eva.dev/v1alpha1") for e in exc.value.errors)
    assert any(e.startswith("kind: must be EvaRun") for e in exc.value.errors)


def test_manifest_round_trips_with_camel_case_keys(tmp_path: Path) -> None:
    run = parse_run(manifest(creator={"sampleFraction": 0.5}))
    text = dump_run(run)
    assert "sampleFraction: 0.5" in text and "sample_fraction" not in text
    f = tmp_path / "r.yaml"
    f.write_text(text)
    assert load_run(f) == run


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: eva.dev/v1alpha1\nkind: EvaRun\nspec: [unclosed\n")
    with pytest.raises(SpecError, match=r"line \d+"):
        load_run(f)


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "examples").glob("*.yaml")))
def test_shipped_examples_are_valid(path: Path) -> None:
    assert isinstance(load_run(path), EvaRun)


def test_eva_validate_exits_nonzero_and_lists_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    doc = manifest(creator={"sampleFraction": 2})
    f.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [sys.executable, "-m", "eva_runtime.cli", "validate", str(f)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "spec.creator.sampleFraction: must be in (0, 1]" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(manifest()))
    out = subprocess.run(
        [sys.executable, "-m", "eva_runtime.cli", "validate", str(good)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def _left_out(modules: str, heavy: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import ``modules`` in a fresh interpreter; fail if any of ``heavy`` got loaded."""
    code = (
        f"import sys, {modules}\n"
        f"heavy = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_spec_and_library_core_import_without_torch() -> None:
    out = _left_out(
        "eva_runtime.spec, eva_runtime.creator, eva_runtime.solver, eva_runtime.cli, "
        "eva_runtime.backends, eva_runtime.models, eva_runtime.runner, eva_runtime.crd",
        ("torch", "transformers", "trl", "vllm"),
    )
    assert out.returncode == 0, out.stderr


def test_the_operator_imports_no_ml_library_nor_pandas() -> None:
    """The operator image has none of them: eva_operator must not pull them in."""
    out = _left_out(
        "eva_operator.main, eva_operator.handlers, eva_operator.plan, eva_operator.jobs, "
        "eva_operator.admission, eva_runtime.spec, eva_runtime.crd",
        ("torch", "transformers", "trl", "vllm", "mlflow", "pandas", "numpy", "pyarrow"),
    )
    assert out.returncode == 0, out.stderr


def test_one_reading_of_a_python_reward_reference() -> None:
    """The spec, the reward backend and the preflight agree: 'module:Class.method' is a
    reference, a bare name or a bad path is not."""
    from eva_runtime.backends.reward_model import load_function
    from eva_runtime.spec import parse_function_ref

    assert parse_function_ref("decimal:Decimal.from_float") == ("decimal", "Decimal.from_float")
    assert parse_function_ref("pkg.mod:fn") == ("pkg.mod", "fn")
    for bad in ("fn", "mod:", ":fn", "mod:1fn", "mod:fn()", "a b:c", None, 3):
        assert parse_function_ref(bad) is None, bad
    assert callable(load_function("decimal:Decimal.from_float"))
    with pytest.raises(ValueError, match="has no attribute"):
        load_function("decimal:Decimal.nope")
    spec = {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": "r"},
        "spec": {
            "policy": {"model": "m"},
            "rewardModel": {"type": "python", "function": "decimal:Decimal.from_float"},
            "prompts": {"source": "p.jsonl"},
        },
    }
    assert parse_run(spec).spec.reward_model.function == "decimal:Decimal.from_float"


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        (
            {"algorithm": "ipo", "lossType": "robust"},
            "spec.solver.lossType: robust is a loss of algorithm dpo",
        ),
        (
            {"lossType": "hinge", "labelSmoothing": 0.1},
            "labelSmoothing: only lossType robust or exo_pair",
        ),
        (
            {"lossType": "robust", "labelSmoothing": 0.5},
            "spec.solver.labelSmoothing: must be less than 0.5",
        ),
        ({"rpoAlpha": 2.0}, "rpoAlpha: only algorithm rpo reads it (algorithm is dpo)"),
        ({"discopopTau": 0.1}, "discopopTau: only lossType discopop reads it"),
        ({"lossType": "kto"}, "spec.solver.lossType: must be one of"),
        ({"algorithm": "rpo", "rpoAlpha": 0}, "spec.solver.rpoAlpha: must be greater than 0"),
    ],
)
def test_solver_loss_fields_that_cannot_apply_are_refused(solver: dict, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_run(manifest(solver=solver), "f.yaml")
    assert any(message in e for e in exc.value.errors), exc.value.errors


def test_solver_loss_fields_that_apply_are_accepted() -> None:
    run = parse_run(manifest(solver={"algorithm": "rpo", "rpoAlpha": 0.5}), "f.yaml")
    assert run.spec.solver.rpo_alpha == 0.5
    run = parse_run(manifest(solver={"lossType": "robust", "labelSmoothing": 0.1}), "f.yaml")
    assert (run.spec.solver.loss_type, run.spec.solver.label_smoothing) == ("robust", 0.1)
    run = parse_run(manifest(solver={"lossType": "discopop", "discopopTau": 0.1}), "f.yaml")
    assert run.spec.solver.discopop_tau == 0.1
