"""The sweep's pure parts: flags, the grid, manifests per cell, statistics."""

from __future__ import annotations

import math
import statistics

import pytest

from eva_runtime.errors import InputError
from eva_runtime.spec import parse_run
from eva_runtime.sweep import (
    ANNOTATION_OVERRIDES,
    LABEL_CELL,
    LABEL_SWEEP,
    Cell,
    apply_overrides,
    bootstrap_interval,
    grid,
    mean_sem,
    paired,
    parse_seeds,
    parse_set,
    plan_runs,
    run_name,
)
from tiny_run import cluster_spec


def base_run():
    return parse_run(
        {
            "apiVersion": "eva.dev/v1alpha1",
            "kind": "EvaRun",
            "metadata": {"name": "demo", "labels": {"team": "a"}},
            "spec": cluster_spec(),
        }
    )


def test_set_values_are_typed_as_in_a_manifest() -> None:
    assert parse_set("creator.enabled=true,false") == ("creator.enabled", [True, False])
    assert parse_set("spec.solver.learningRate=3e-5, 1.0e-4") == (
        "solver.learningRate",
        [3e-5, 1e-4],
    )
    assert parse_set("creator.informativeness=gap,variance") == (
        "creator.informativeness",
        ["gap", "variance"],
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("creator.enabled", "expected PATH=VALUE"),
        ("=1", "expected PATH=VALUE"),
        ("creator..enabled=1", "not a dotted spec path"),
        ("creator.enabled=true,,false", "an empty value"),
        ("creator.enabled=true,true", "given twice"),
        ("solver.beta=.inf", "not a finite number"),
        ("solver.beta={a: 1}", "scalars"),
        ("solver.beta=[1", "not a YAML scalar"),
        ("seed=1,2", "--seeds"),
    ],
)
def test_bad_set_flags_are_refused_naming_the_flag(flag: str, message: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_set(flag)
    assert message in str(exc.value)
    assert "--set" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("42,x", "'x' is not a whole number"), ("1,1", "given twice"), ("-3", "'-3'"), ("", "''")],
)
def test_bad_seeds_are_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_seeds(text)


def test_the_grid_is_every_combination_first_flag_slowest() -> None:
    cells = grid([("creator.enabled", [True, False]), ("solver.beta", [0.1, 0.2])])
    assert [c.name for c in cells] == [
        "creator.enabled=true,solver.beta=0.1",
        "creator.enabled=true,solver.beta=0.2",
        "creator.enabled=false,solver.beta=0.1",
        "creator.enabled=false,solver.beta=0.2",
    ]
    assert len({c.key for c in cells}) == 4
    assert grid([]) == [Cell(())] and Cell(()).name == "base"
    with pytest.raises(InputError, match="given twice"):
        grid([("solver.beta", [0.1]), ("solver.beta", [0.2])])


def test_a_cell_run_is_the_base_with_overrides_seed_name_and_labels() -> None:
    cell = Cell((("creator.enabled", False), ("solver.beta", 0.3)))
    run = apply_overrides(base_run(), cell, 5, sweep="demo")
    assert run.spec.creator.enabled is False and run.spec.solver.beta == 0.3
    assert run.spec.seed == 5
    assert run.name == f"demo-{cell.key}-s5" == run_name("demo", cell, 5)
    labels = run.metadata.model_dump(by_alias=True)["labels"]
    assert labels == {"team": "a", LABEL_SWEEP: "demo", LABEL_CELL: cell.key, "eva.dev/seed": "5"}
    annotations = run.metadata.model_dump(by_alias=True)["annotations"]
    assert annotations[ANNOTATION_OVERRIDES] == '{"creator.enabled": false, "solver.beta": 0.3}'
    # Everything else is the base's.
    assert run.spec.prompts == base_run().spec.prompts
    # A long sweep name still gives a DNS label.
    assert len(run_name("x" * 40, cell, 10**17)) <= 63


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("creator.enabeld=true", "spec.creator has no field 'enabeld'"),
        ("creator=1", "spec.creator: is a section"),
        ("iterations.x=1", "spec.iterations is a value"),
        ("creator.evolve.variantsPerPrompt=0", "spec.creator.evolve.variantsPerPrompt: must be"),
        ("creator.informativeness=gapp", "spec.creator.informativeness: must be one of"),
        ("solver.lora.r=0", "spec.solver.lora.r"),
    ],
)
def test_a_bad_path_or_value_is_refused_before_any_run(flag: str, message: str) -> None:
    cells = grid([parse_set(flag)])
    with pytest.raises(InputError) as exc:
        plan_runs(base_run(), cells, [1, 2], sweep="demo")
    assert message in str(exc.value)


def test_a_section_that_is_null_in_the_base_can_be_set_field_by_field() -> None:
    run = apply_overrides(base_run(), Cell((("solver.lora.r", 8),)), 1, sweep="demo")
    assert run.spec.solver.lora is not None and run.spec.solver.lora.r == 8


def test_runs_are_planned_seed_by_seed() -> None:
    cells = grid([parse_set("creator.enabled=true,false")])
    plan = plan_runs(base_run(), cells, [3, 1], sweep="demo")
    assert [(c.name, s) for c, s, _ in plan] == [
        ("creator.enabled=true", 3),
        ("creator.enabled=false", 3),
        ("creator.enabled=true", 1),
        ("creator.enabled=false", 1),
    ]
    with pytest.raises(InputError, match="sweep name"):
        plan_runs(base_run(), cells, [1], sweep="Bad_Name")


def test_mean_and_standard_error_match_the_textbook() -> None:
    xs = [-0.511, -0.462, -0.506]
    got = mean_sem(xs)
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(statistics.mean(xs))
    assert got["sem"] == pytest.approx(statistics.stdev(xs) / math.sqrt(3))
    assert mean_sem([]) == {"mean": None, "sem": None, "n": 0}
    assert mean_sem([1.0]) == {"mean": 1.0, "sem": None, "n": 1}
    assert mean_sem([1.0, float("nan")])["n"] == 1


def test_paired_differences_and_their_interval() -> None:
    cell = {42: -0.511, 1: -0.462, 2: -0.506, 9: -0.4}
    ref = {42: -0.423, 1: -0.351, 2: -0.336}  # seed 9 has no partner: left out
    got = paired(cell, ref)
    diffs = [-0.511 + 0.423, -0.462 + 0.351, -0.506 + 0.336]  # seeds 1, 2, 42 in order
    assert got["seeds"] == [1, 2, 42]
    assert got["diffs"] == pytest.approx([diffs[1], diffs[2], diffs[0]])
    assert got["mean"] == pytest.approx(statistics.mean(diffs))
    assert got["sem"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    lo, hi = got["ci95"]
    assert min(diffs) - 1e-12 <= lo <= got["mean"] <= hi <= max(diffs) + 1e-12
    assert got["verdict"] == "lower" and got["higher_on"] == 0
    # The interval is seeded: the same numbers give the same interval.
    assert bootstrap_interval(diffs) == bootstrap_interval(diffs)


def test_a_difference_whose_interval_holds_zero_is_called_noise() -> None:
    got = paired({1: 0.1, 2: -0.1, 3: 0.05}, {1: 0.0, 2: 0.0, 3: 0.0})
    assert got["verdict"] == "within noise"
    assert got["higher_on"] == 2
    one = paired({1: 0.5}, {1: 0.0})
    assert one["ci95"] is None and one["verdict"] == "too few seeds"
    two = paired({1: 0.5, 2: 0.6}, {1: 0.0, 2: 0.0})  # always higher, but two seeds prove nothing
    assert two["ci95"] is not None and two["verdict"] == "too few seeds"
    assert paired({1: 0.5}, {2: 0.0})["verdict"] == "no paired seeds"


def _fake_sweep(root, marker_text: str) -> None:
    import json

    (root / "cells" / "base" / "seed-1" / "iter-0" / "evaluate").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"name": "s", "base": "", "invocations": []}))
    (root / "cells" / "base" / "cell.json").write_text(json.dumps({"overrides": {}}))
    marker = root / "cells" / "base" / "seed-1" / "iter-0" / "evaluate" / "_SUCCESS.json"
    marker.write_text(marker_text)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"counts": 3}', "\udcff"])
def test_a_damaged_run_in_a_sweep_is_named_by_the_report(tmp_path, text: str) -> None:
    from click.testing import CliRunner

    from eva_runtime.cli import main

    _fake_sweep(tmp_path, text.encode("utf-8", "surrogateescape").decode("latin-1"))
    result = CliRunner().invoke(main, ["sweep", "report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "evaluate/_SUCCESS.json: damaged" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path) -> None:
    from click.testing import CliRunner

    from eva_runtime.cli import main

    result = CliRunner().invoke(main, ["sweep", "report", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep folder (no sweep.json)" in result.output
    (tmp_path / "sweep.json").write_text("[]")
    result = CliRunner().invoke(main, ["sweep", "report", str(tmp_path)])
    assert result.exit_code == 2 and "sweep.json: not a sweep definition" in result.output


def _finished(path, counts) -> None:
    from eva_runtime.artifacts import StepDir

    sd = StepDir(path)
    sd.begin()
    sd.finish(counts)


def test_the_sweep_report_pairs_benchmark_scores_by_seed(tmp_path) -> None:
    """Two cells x three seeds of one iteration: the eva cell's arena-hard score is 4, 5 and 6
    points above the baseline's on seeds 1, 2, 3, so the paired verdict is 'higher'; the HTML
    has the benchmarks table."""
    import json

    from click.testing import CliRunner

    from eva_runtime.cli import main

    cells = {"base": {"creator.enabled": False}, "eva": {}}
    invocations = [{"cells": [cells["base"], cells["eva"]], "seeds": [1, 2, 3]}]
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "invocations": invocations}))
    for cell, overrides in cells.items():
        folder = tmp_path / "cells" / cell
        folder.mkdir(parents=True)
        (folder / "cell.json").write_text(json.dumps({"overrides": overrides}))
        for seed in (1, 2, 3):
            run = folder / f"seed-{seed}"
            lift = (3 + seed) if cell == "eva" else 0.0
            _finished(run / "iter-0" / "train", {"pairs": 4})
            _finished(run / "iter-0" / "evaluate", {"reward_previous": 0.1, "reward_new": 0.2})
            _finished(
                run / "iter-0" / "benchmark",
                {
                    "bench/arena-hard/base_score": 30.0,
                    "bench/arena-hard/score": 40.0 + seed + lift,
                    "bench/arena-hard/ci_low": 20.0,
                    "bench/arena-hard/ci_high": 60.0,
                },
            )
    result = CliRunner().invoke(main, ["sweep", "report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["reference"] == "creator.enabled=false"
    eva = next(c for c in summary["cells"] if not c["reference"])
    bench = eva["benchmarks"]["arena-hard"]
    assert bench["score"]["mean"] == pytest.approx(47.0) and bench["score"]["n"] == 3
    assert bench["vs_reference"]["diffs"] == [4.0, 5.0, 6.0]
    assert bench["vs_reference"]["verdict"] == "higher"
    ref = next(c for c in summary["cells"] if c["reference"])
    assert ref["benchmarks"]["arena-hard"]["score"]["mean"] == pytest.approx(42.0)
    page = (tmp_path / "sweep-report.html").read_text()
    assert "Independent benchmarks" in page and "arena-hard" in page
