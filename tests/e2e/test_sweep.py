"""`eva sweep` on the tiny model: 2 cells x 2 seeds, killed and resumed, then reported; the
report's statistics checked against values computed here from the run directories."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eva_runtime.artifacts import RunDir
from eva_runtime.spec import load_run
from tiny_run import eva_process, tiny_manifest

pytestmark = pytest.mark.timeout(600)

CELLS = ("creator.enabled=true", "creator.enabled=false")
SEEDS = (3, 4)


def _evaluate(run: Path) -> dict:
    return json.loads((RunDir(run).step(0, "evaluate").marker).read_text())["counts"]


def test_a_killed_sweep_resumes_and_its_report_has_the_right_statistics(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tiny_manifest(tmp_path, tiny_model, name="grid", spec={"prompts": {"heldOut": 4}})
    root = tmp_path / "sweep"
    args = ["sweep", str(manifest), "--seeds", "3,4", "--set", "creator.enabled=true,false"]
    args += ["--workdir", str(root), "--no-tracking"]

    # Killed while the second run (cell creator.enabled=false, seed 3) is under way.
    proc = eva_process(*args, cwd=tmp_path)
    first = root / "cells" / CELLS[0] / "seed-3"
    second = root / "cells" / CELLS[1] / "seed-3"
    deadline = time.time() + 300
    while not (second / "iter-0").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert RunDir(first).step(0, "evaluate").complete()
    assert not RunDir(second).step(0, "evaluate").complete()
    done = {p: p.stat().st_mtime_ns for p in first.rglob("_SUCCESS.json")}

    again = eva_process(*args, cwd=tmp_path)
    out, err = again.communicate(timeout=500)
    assert again.returncode == 0, err[-3000:]
    # The complete run was not run again; every run of the grid is complete.
    assert {p: p.stat().st_mtime_ns for p in first.rglob("_SUCCESS.json")} == done
    for cell in CELLS:
        for seed in SEEDS:
            run = root / "cells" / cell / f"seed-{seed}"
            assert RunDir(run).step(0, "evaluate").complete(), run
            recorded = load_run(run / "evarun.yaml")
            assert recorded.spec.seed == seed
            assert recorded.spec.creator.enabled is (cell == CELLS[0])
    definition = json.loads((root / "sweep.json").read_text())
    assert definition["name"] == "grid"
    assert definition["invocations"][-1]["cells"] == [
        {"creator.enabled": True},
        {"creator.enabled": False},
    ]
    assert len(definition["invocations"]) == 1  # the same grid again is not a new invocation
    assert load_run(manifest).spec == load_run_from_text(definition["base"]).spec

    rep = eva_process("sweep", "report", str(root), cwd=tmp_path)
    out, err = rep.communicate(timeout=120)
    assert rep.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["reference"] == CELLS[1]  # the baseline, found without --reference
    by_name = {c["name"]: c for c in summary["cells"]}
    assert list(by_name) == list(CELLS)

    finals = {
        cell: {s: _evaluate(root / "cells" / cell / f"seed-{s}")["reward_new"] for s in SEEDS}
        for cell in CELLS
    }
    for cell in CELLS:
        c = by_name[cell]
        assert c["overrides"] == {"creator.enabled": cell == CELLS[0]}
        assert c["seeds"] == list(SEEDS)
        vals = list(finals[cell].values())
        assert c["heldout_reward"]["n"] == 2
        assert c["heldout_reward"]["mean"] == pytest.approx(statistics.mean(vals))
        assert c["heldout_reward"]["sem"] == pytest.approx(statistics.stdev(vals) / math.sqrt(2))
        base = [_evaluate(root / "cells" / cell / f"seed-{s}")["reward_previous"] for s in SEEDS]
        assert c["iterations"][0]["heldout_reward"]["mean"] == pytest.approx(statistics.mean(base))
        # What each run spent is recorded and summed from its steps.
        for s in SEEDS:
            spent = c["per_seed"][str(s)]["spend"]
            rd = RunDir(root / "cells" / cell / f"seed-{s}")
            gen = json.loads(rd.step(0, "generate").marker.read_text())["counts"]
            train = json.loads(rd.step(0, "train").marker.read_text())["counts"]
            assert spent["pairs"] == train["pairs"] > 0
            assert spent["train_tokens"] == train["train_tokens"] > 0
            assert spent["generated_tokens"] >= gen["tokens"] > 0
            if cell == CELLS[0]:
                create = json.loads(rd.step(0, "create").marker.read_text())["counts"]
                assert create["evolve_tokens"] > 0
                assert spent["evolve_requests"] == create["evolve_requests"] > 0
            else:
                assert spent["generated_tokens"] == gen["tokens"]
                assert spent["evolve_requests"] == 0
    eva_cell = by_name[CELLS[0]]
    diffs = [finals[CELLS[0]][s] - finals[CELLS[1]][s] for s in SEEDS]
    vs = eva_cell["vs_reference"]
    assert vs["seeds"] == list(SEEDS)
    assert vs["diffs"] == pytest.approx(diffs)
    assert vs["mean"] == pytest.approx(statistics.mean(diffs))
    assert vs["higher_on"] == sum(d > 0 for d in diffs)
    # Win rate per seed from the final responses, paired by (prompt, sample).
    for s in SEEDS:
        a, b = (
            pd.read_parquet(
                RunDir(root / "cells" / c / f"seed-{s}").step(0, "evaluate").path
                / "responses.parquet"
            )
            for c in CELLS
        )
        a, b = a[a["policy"] == "new"], b[b["policy"] == "new"]
        m = a.merge(b, on=["prompt_id", "sample"])
        assert len(m) == len(a) == 8  # same held-out prompts in both cells of a seed
        wins = (m["reward_x"] > m["reward_y"]).sum() + 0.5 * (m["reward_x"] == m["reward_y"]).sum()
        assert vs["win_rate"][str(s)] == pytest.approx(wins / len(m))
    # The page, the Markdown table and the CSV.
    page = (root / "sweep-report.html").read_text()
    assert "creator.enabled=false" in page and "<img" in page
    md = (root / "sweep-report.md").read_text()
    assert md.count("\n| creator.enabled=") == 2
    rows = (root / "sweep-report.csv").read_text().splitlines()
    assert len(rows) == 1 + 4


def load_run_from_text(text: str):
    from eva_runtime.spec import parse_run

    return parse_run(yaml.safe_load(text))


def test_bad_sweep_flags_are_refused_before_anything_runs(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, tmp_path / "no-model-needed", name="bad")
    root = tmp_path / "sweep"
    cases = [
        (["--seeds", "1", "--set", "creator.sampleFracton=0.5"], "has no field 'sampleFracton'"),
        (["--seeds", "1", "--set", "creator.sampleFraction=0.5,2"], "creator.sampleFraction"),
        (["--seeds", "1,x"], "'x' is not a whole number"),
        (["--seeds", "1", "--set", "seed=2"], "--seeds"),
        (["--seeds", "1", "--name", "Not_A_Label"], "DNS label"),
        (["--seeds", "1", "--iterations", "0"], "spec.iterations"),
    ]
    for extra, message in cases:
        proc = eva_process("sweep", str(manifest), *extra, "--workdir", str(root), cwd=tmp_path)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (extra, err)
        assert message in err, (extra, err)
        assert "Traceback" not in err
        assert not root.exists(), extra  # nothing was written


def test_emitted_manifests_validate_and_carry_the_sweep_labels(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, tmp_path / "model", name="emit")
    out = tmp_path / "manifests"
    proc = eva_process(
        "sweep",
        str(manifest),
        "--seeds",
        "1,2",
        "--set",
        "creator.enabled=true,false",
        "--set",
        "solver.beta=0.1,0.2",
        "--emit",
        str(out),
        cwd=tmp_path,
    )
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    files = sorted(out.glob("*.yaml"))
    assert len(files) == 8 and "wrote 8 EvaRun manifests" in stdout
    cells = set()
    for f in files:
        run = load_run(f)
        labels = run.metadata.model_dump(by_alias=True)["labels"]
        assert labels["eva.dev/sweep"] == "emit"
        assert run.name == f.stem and run.name.endswith(f"-s{run.spec.seed}")
        assert labels["eva.dev/seed"] == str(run.spec.seed)
        cells.add((labels["eva.dev/sweep-cell"], run.spec.creator.enabled, run.spec.solver.beta))
    assert len(cells) == 4
    val = eva_process("validate", *map(str, files), cwd=tmp_path)
    _o, err = val.communicate(timeout=60)
    assert val.returncode == 0, err
