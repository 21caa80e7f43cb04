"""evaluation.benchmarks in a whole run: a benchmark step after evaluate in every iteration,
the base policy benchmarked once, results in the step summary, MLflow, Prometheus and the
report; a killed benchmark step resumes asking the judge only for what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eva_runtime.artifacts import RunDir
from eva_runtime.runner import run_all
from eva_runtime.spec import load_run
from judge_stub import judge_stub
from tiny_run import tiny_manifest

pytestmark = pytest.mark.timeout(600)

DATA = Path(__file__).parents[2] / "manifests" / "examples" / "data" / "bench"


def _reply(body: dict, n: int) -> tuple[int, str, float]:
    user = body["messages"][-1]["content"]
    if "[Answer of assistant A]" in user:
        return 200, "Both are poor. [[A>B]]", 0.0
    return 200, "Rating: [[3]]", 0.0


def _benchmarks(url: str) -> list[dict]:
    judge = {"endpoint": {"baseUrl": url, "model": "stub-judge"}, "maxRetries": 1}
    return [
        {
            "suite": "arena-hard",
            "questions": str(DATA / "arena-hard-questions.jsonl"),
            "answers": str(DATA / "arena-hard-baseline.jsonl"),
            "judge": judge,
            "limit": 4,
            "maxNewTokens": 8,
        },
        {
            "name": "mt",
            "suite": "mt-bench",
            "questions": str(DATA / "mt-bench-questions.jsonl"),
            "judge": judge,
            "limit": 3,
            "maxNewTokens": 8,
        },
    ]


def test_benchmarks_run_every_iteration_and_reach_mlflow_and_the_report(
    tmp_path: Path, tiny_model: Path
) -> None:
    with judge_stub(_reply) as stub:
        manifest = tiny_manifest(
            tmp_path,
            tiny_model,
            creator=False,
            spec={"iterations": 2, "evaluation": {"benchmarks": _benchmarks(stub.url)}},
        )
        result = run_all(load_run(manifest), tmp_path / "runs")
        rd = RunDir(result.run_dir)
        first = rd.step(0, "benchmark").summary()["counts"]
        second = rd.step(1, "benchmark").summary()["counts"]
        # Iteration 0 benchmarks the base policy and the new one; iteration 1 only the new.
        # arena-hard: 4 questions x 2 games; mt-bench: 3 questions x 2 turns.
        assert len(stub.requests) == 2 * (8 + 6) + (8 + 6)
    assert first["bench/arena-hard/score"] == 50.0  # position bias cancels
    assert first["bench/arena-hard/base_score"] == 50.0
    assert first["bench/mt/score"] == 3.0 and first["bench/mt/turn_2"] == 3.0
    assert first["bench/arena-hard/judged"] == 8 and first["bench/mt/judged"] == 6
    assert "bench/mt/base_score" in first and "bench/mt/base_score" not in second
    assert first["responses"] == 2 * (4 + 6) and second["responses"] == 4 + 6
    for t in (0, 1):
        folder = rd.step(t, "benchmark").path
        saved = json.loads((folder / "mt" / "policy" / "result.json").read_text())
        assert saved["model"].endswith(f"iter-{t}/train/model")
    # MLflow: bench/<name>/score by iteration on the run, base score on iteration 0.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    state = json.loads((result.run_dir / "tracking.json").read_text())
    parent = state["servers"][next(iter(state["servers"]))]["parent_run_id"]
    history = client.get_metric_history(parent, "bench/arena-hard/score")
    assert sorted(m.step for m in history) == [0, 1]
    assert [m.value for m in client.get_metric_history(parent, "bench/mt/base_score")] == [3.0]
    assert client.get_metric_history(parent, "bench/mt/ci_low")
    # The report: score by iteration with intervals, and the biggest wins and losses.
    from eva_runtime.report import write_report

    page = write_report(result.run_dir, tmp_path / "report.html").read_text()
    assert "Independent benchmarks" in page
    assert "arena-hard" in page and "Biggest wins and losses" in page
    # The summary table shows them too.
    done = subprocess.run(
        [sys.executable, "-m", "eva_runtime.cli", "summary", str(result.run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "bench arena-hard: base 50.00" in done.stdout + done.stderr


def test_a_killed_benchmark_step_asks_the_judge_only_for_what_is_missing(
    tmp_path: Path, tiny_model: Path
) -> None:
    def slow(body: dict, n: int) -> tuple[int, str, float]:
        code, text, _ = _reply(body, n)
        return code, text, 0.3

    with judge_stub(slow) as stub:
        benchmarks = _benchmarks(stub.url)[:1]
        benchmarks[0]["judge"]["concurrency"] = 1
        manifest = tiny_manifest(
            tmp_path, tiny_model, creator=False, spec={"evaluation": {"benchmarks": benchmarks}}
        )
        cmd = [sys.executable, "-m", "eva_runtime.cli", "run", str(manifest), "--no-tracking",
               "--workdir", str(tmp_path / "runs")]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "EVA_SPEC_YAML"}
        log = tmp_path / "run.log"
        with log.open("w") as out:  # a file, not a pipe: nobody reads it until the kill
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline and len(stub.requests) < 10 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        run_dir = tmp_path / "runs" / "default" / "tiny"
        rd = RunDir(run_dir)
        assert not rd.step(0, "benchmark").complete()
        kept = sum(
            len(p.read_text().splitlines())
            for p in rd.step(0, "benchmark").path.rglob("judgments.jsonl")
        )
        assert kept >= 8  # the base policy's 8 games at least, from before the kill
        asked = len(stub.requests)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert rd.step(0, "benchmark").complete()
        again = len(stub.requests) - asked
        assert 16 - kept <= again <= 16 - kept + 1  # one in flight at the kill may repeat


def test_a_benchmark_spec_the_user_gets_wrong(tmp_path: Path, tiny_model: Path) -> None:
    from eva_runtime.errors import EvaError
    from eva_runtime.spec import SpecError

    bad = _benchmarks("http://127.0.0.1:9/v1")
    del bad[0]["answers"]
    manifest = tiny_manifest(tmp_path, tiny_model, spec={"evaluation": {"benchmarks": bad}})
    needs = r"spec\.evaluation\.benchmarks\[0\]\.answers: required for arena-hard"
    with pytest.raises(SpecError, match=needs):
        load_run(manifest)
    bad = _benchmarks("http://127.0.0.1:9/v1")
    bad[1]["name"] = "arena-hard"
    manifest = tiny_manifest(tmp_path, tiny_model, spec={"evaluation": {"benchmarks": bad}})
    with pytest.raises(SpecError, match="two benchmarks are named 'arena-hard'"):
        load_run(manifest)
    bad = _benchmarks("http://127.0.0.1:9/v1")
    bad[1]["questions"] = str(tmp_path / "missing.jsonl")
    bad[0]["judge"] = {
        "endpoint": {"baseUrl": "http://x/v1", "model": "m", "apiKeyEnv": "EVA_T_NOPE"}
    }
    doc = yaml.safe_load(tiny_manifest(tmp_path, tiny_model).read_text())
    doc["spec"]["evaluation"]["benchmarks"] = bad
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(EvaError) as info:
        run_all(load_run(tmp_path / "m.yaml"), tmp_path / "runs")
    text = str(info.value)
    assert "spec.evaluation.benchmarks[1].questions" in text and "missing.jsonl not found" in text
    assert "benchmarks[0].judge.endpoint.apiKeyEnv: environment variable EVA_T_NOPE" in text
    assert not (tmp_path / "runs").exists()
