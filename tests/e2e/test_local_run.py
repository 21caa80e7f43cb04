"""Whole runs on a tiny random model: every step, the baseline, resume after a kill."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from eva_runtime.artifacts import RunDir
from eva_runtime.runner import run_all
from eva_runtime.spec import load_run
from tiny_run import eva_process, tiny_manifest

pytestmark = pytest.mark.timeout(300)


def digests(run_dir: Path) -> dict[str, dict[str, str]]:
    out = {}
    for marker in sorted(run_dir.rglob("_SUCCESS.json")):
        out[str(marker.parent.relative_to(run_dir))] = json.loads(marker.read_text())["digests"]
    return out


def test_one_eva_iteration_runs_every_step(tmp_path: Path, tiny_model: Path) -> None:
    run = load_run(tiny_manifest(tmp_path, tiny_model))
    t0 = time.time()
    result = run_all(run, tmp_path / "runs")  # tracking on: the embedded MLflow default
    elapsed = time.time() - t0
    rd = RunDir(result.run_dir)
    for step in ("generate", "create", "generate-evolved", "train", "evaluate"):
        assert rd.step(0, step).complete(), step
    prep = rd.prepare().summary()["counts"]
    assert (prep["prompts"], prep["heldout"]) == (12, 3)

    rollouts = pd.read_parquet(
        rd.step(0, "generate").path / "shard-00000-of-00001" / "rollouts.parquet"
    )
    assert len(rollouts) == 12 * 3 and rollouts["reward"].notna().all()
    assert "preferences" not in rollouts  # a pointwise reward keeps no matrix
    # Where each step's time went: every part, adding up to the step's seconds; the models
    # each step loaded (generate: the policy and the reward model).
    from eva_runtime.timing import STEP_PARTS

    for step in ("generate", "create", "generate-evolved", "train", "evaluate"):
        timings = rd.step(0, step).summary()["timings"]
        assert set(timings["phases"]) == set(STEP_PARTS), step
        assert sum(timings["phases"].values()) == pytest.approx(timings["seconds"], abs=0.01)
    parts = {s: rd.step(0, s).summary()["timings"] for s in ("generate", "train", "create")}
    assert parts["generate"]["loads"] == 2 and parts["generate"]["phases"]["generate"] > 0
    assert parts["train"]["loads"] == 1 and parts["train"]["phases"]["train"] > 0
    assert parts["create"]["phases"]["evolve"] > 0
    assert "comparison" not in rd.step(0, "evaluate").summary()

    create = rd.step(0, "create")
    c = create.summary()["counts"]
    assert c["selected"] == 6 and c["evolve_requests"] == 18
    assert c["evolved"] + c["dropped"] == 18  # every evolver reply kept or dropped with a reason
    evolved = pd.read_parquet(create.path / "evolved.parquet")
    scores = pd.read_parquet(create.path / "scores.parquet")
    selected = set(scores.loc[scores["selected"], "prompt_id"])
    assert set(evolved["parent_id"]) <= selected
    assert (evolved["iteration"] == 0).all() and (evolved["depth"] == 1).all()
    assert evolved["parent_informativeness"].notna().all()
    mixed = pd.read_parquet(create.path / "mixed.parquet")
    assert set(mixed["origin"]) <= {"evolved", "buffer"}
    assert (mixed["origin"] == "evolved").sum() == len(evolved)

    pairs = pd.read_parquet(rd.step(0, "train").path / "pairs.parquet")
    assert len(pairs) > 0
    assert (pairs["chosen_reward"] > pairs["rejected_reward"]).all()
    assert set(pairs["prompt_id"]) <= set(mixed["prompt_id"])
    model = rd.step(0, "train").path / "model"
    assert (model / "config.json").exists()

    ev = rd.step(0, "evaluate").summary()["counts"]
    assert ev["heldout"] == 3 and ev["samples"] == 6 and 0.0 <= ev["win_rate"] <= 1.0
    row = result.rows[0]
    assert row["pairs"] == len(pairs) and row["evolved"] == len(evolved)
    # Every step reached the embedded MLflow store (<workdir>/mlflow.db).
    assert (tmp_path / "runs" / "mlflow.db").exists()
    logged = json.loads((result.run_dir / "tracking.json").read_text())
    assert "iter-0/evaluate" in json.dumps(logged)
    print(f"one eva iteration on the tiny model: {elapsed:.1f}s")


def test_baseline_runs_generate_train_evaluate_on_fixed_prompts(
    tmp_path: Path, tiny_model: Path
) -> None:
    run = load_run(tiny_manifest(tmp_path, tiny_model, creator=False, name="baseline"))
    run.spec.iterations = 2
    t0 = time.time()
    result = run_all(run, tmp_path / "runs", tracking=False)
    rd = RunDir(result.run_dir)
    for t in (0, 1):
        assert not rd.step(t, "create").path.exists()
        assert rd.step(t, "evaluate").complete()
        g = pd.read_parquet(
            rd.step(t, "generate").path / "shard-00000-of-00001" / "rollouts.parquet"
        )
        assert sorted(set(g["prompt_id"])) == sorted(
            pd.read_parquet(rd.prepare().path / "train.parquet")["prompt_id"]
        )
    # The second iteration starts from the first one's policy.
    assert rd.step(1, "train").summary()["policy"] == str(rd.step(0, "train").path / "model")
    # Held-out "previous" of iteration 1 is iteration 0's "new": one evaluation per policy.
    e0 = pd.read_parquet(rd.step(0, "evaluate").path / "responses.parquet")
    e1 = pd.read_parquet(rd.step(1, "evaluate").path / "responses.parquet")
    new0 = e0[e0["policy"] == "new"].reset_index(drop=True)
    prev1 = e1[e1["policy"] == "previous"].reset_index(drop=True)
    assert new0["response"].tolist() == prev1["response"].tolist()
    print(f"two baseline iterations on the tiny model: {time.time() - t0:.1f}s")


@pytest.mark.parametrize(
    "solver",
    [{"algorithm": "rpo", "rpoAlpha": 0.5}, {"lossType": "sppo_hard"}],
    ids=["rpo", "sppo_hard"],
)
def test_rpo_and_a_dpo_loss_type_run_two_iterations(
    tmp_path: Path, tiny_model: Path, solver: dict
) -> None:
    """eva run end to end with the solver's other losses: each iteration trains, and the
    second starts from the first one's policy."""
    manifest = tiny_manifest(
        tmp_path, tiny_model, creator=False, name="loss", spec={"iterations": 2, "solver": solver}
    )
    result = run_all(load_run(manifest), tmp_path / "runs", tracking=False)
    rd = RunDir(result.run_dir)
    train = [rd.step(t, "train").summary() for t in (0, 1)]
    assert all(s["counts"]["pairs"] > 0 for s in train)
    assert train[1]["policy"] == str(rd.step(0, "train").path / "model")
    assert rd.step(1, "evaluate").complete()


def test_pairwise_ranker_rewards_and_sppo_run_two_iterations(
    tmp_path: Path, tiny_model: Path, tiny_ranker: Path
) -> None:
    """eva run with a PairRM-style cross-encoder ranking the responses and SPPO training on
    their win probabilities, creator on: rollouts carry the preference matrix, pairs the
    probabilities, and the evaluation compares the two policies' answers head to head."""
    spec = {
        "iterations": 2,
        "rewardModel": {
            "type": "pairwise",
            "model": str(tiny_ranker),
            "maxLength": 128,
            "function": None,  # the base manifest's python reward: a ranker reads none
        },
        "solver": {"algorithm": "sppo"},
    }
    manifest = tiny_manifest(tmp_path, tiny_model, name="sppo", spec=spec)
    result = run_all(load_run(manifest), tmp_path / "runs", tracking=False)
    rd = RunDir(result.run_dir)
    rollouts = pd.read_parquet(rd.shard(0, "generate", 0, 1).path / "rollouts.parquet")
    assert rollouts["reward"].between(0, 1).all()
    for _, group in rollouts.groupby("prompt_id"):
        # Mean win probabilities among a prompt's 3 samples average 1/2; each row keeps its
        # probabilities of beating every sample (itself 0.5), whose mean over the others
        # is its reward.
        assert group["reward"].mean() == pytest.approx(0.5)
        for _, row in group.iterrows():
            probs = list(row["preferences"])
            assert len(probs) == 3 and probs[int(row["sample"])] == 0.5
            assert (sum(probs) - 0.5) / 2 == pytest.approx(row["reward"])
    pairs = pd.read_parquet(rd.step(0, "train").path / "pairs.parquet")
    assert len(pairs) and (pairs["chosen_prob"] > pairs["rejected_prob"]).all()
    assert (pairs["chosen_prob"] == pairs["chosen_reward"]).all()
    train = [rd.step(t, "train").summary() for t in (0, 1)]
    assert all(s["counts"]["trained"] == 1 for s in train)
    assert train[0]["algorithm"] == "sppo"
    assert train[1]["policy"] == str(rd.step(0, "train").path / "model")
    for t in (0, 1):
        ev = rd.step(t, "evaluate").summary()["counts"]
        responses = pd.read_parquet(rd.step(t, "evaluate").path / "responses.parquet")
        new = responses[responses["policy"] == "new"]
        prev = responses[responses["policy"] == "previous"]
        # Head to head: P(new beats previous) and its complement, paired by (prompt, sample).
        both = new.merge(prev, on=["prompt_id", "sample"], suffixes=("_n", "_p"))
        assert (both["reward_n"] + both["reward_p"]).to_numpy() == pytest.approx(1.0)
        assert ev["win_rate"] == pytest.approx(new["reward"].mean())
        assert ev["reward_new"] + ev["reward_previous"] == pytest.approx(1.0)
    # The summary and the report say the held-out values are duels, not one curve.
    from eva_runtime.report import HEAD_TO_HEAD_NOTE, write_report
    from eva_runtime.summary import summary_rows

    assert [r["head_to_head"] for r in summary_rows(rd, 2)] == [True, True]
    page = write_report(result.run_dir, tmp_path / "report.html").read_text()
    assert HEAD_TO_HEAD_NOTE.split(",")[0] in page


def test_pairwise_python_preference_with_dpo(tmp_path: Path, tiny_model: Path) -> None:
    """The pairwise reward from a python preference, one order only, drives a dpo run."""
    spec = {
        "rewardModel": {"type": "pairwise", "preference": "python",
                        "function": "eva_runtime.rewards:length_preference", "bothOrders": False},
    }  # fmt: skip
    manifest = tiny_manifest(tmp_path, tiny_model, creator=False, name="pw", spec=spec)
    result = run_all(load_run(manifest), tmp_path / "runs", tracking=False)
    rd = RunDir(result.run_dir)
    train = rd.step(0, "train").summary()["counts"]
    assert train["pairs"] > 0 and train["trained"] == 1
    pairs = pd.read_parquet(rd.step(0, "train").path / "pairs.parquet")
    assert "chosen_prob" not in pairs  # only sppo reads them
    ev = rd.step(0, "evaluate").summary()
    assert 0.0 <= ev["counts"]["win_rate"] <= 1.0 and ev["comparison"] == "head-to-head"


def _loads(run_dir: Path, iterations: int) -> list[int]:
    rd = RunDir(run_dir)
    steps = ("generate", "create", "generate-evolved", "train", "evaluate")
    return [
        sum(int(rd.step(t, s).summary()["timings"]["loads"]) for s in steps)
        for t in range(iterations)
    ]


def test_warm_models_load_less_and_write_the_same_bytes(tmp_path: Path, tiny_model: Path) -> None:
    """eva run keeps the policy and the reward model loaded across the steps of an iteration
    and the new policy into the next one; every file is byte for byte a cold run's."""
    manifest = tiny_manifest(tmp_path, tiny_model, name="warm", spec={"iterations": 2})
    cold = run_all(load_run(manifest), tmp_path / "cold", tracking=False, warm=False)
    hot = run_all(load_run(manifest), tmp_path / "hot", tracking=False)
    assert digests(hot.run_dir) == digests(cold.run_dir)
    # Cold: generate 2 (policy, reward model), create 1, generate-evolved 2, train 1,
    # evaluate 3 (base policy, new policy, reward model; later 2: the previous answers are
    # reused). Warm: the policy and reward model once, train, evaluate's new policy and
    # reward model again; the next iteration starts from that new policy, already loaded.
    assert _loads(cold.run_dir, 2) == [9, 8]
    assert _loads(hot.run_dir, 2) == [6, 3]


def test_rerunning_a_complete_run_does_nothing(tmp_path: Path, tiny_model: Path) -> None:
    run = load_run(tiny_manifest(tmp_path, tiny_model, creator=False, name="again"))
    first = run_all(run, tmp_path / "runs", tracking=False)
    before = digests(first.run_dir)
    stamps = {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("_SUCCESS.json")}
    run_all(run, tmp_path / "runs", tracking=False)
    assert digests(first.run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in first.run_dir.rglob("_SUCCESS.json")} == stamps


def test_killed_run_resumes_to_the_same_digests(tmp_path: Path, tiny_model: Path) -> None:
    manifest = tiny_manifest(
        tmp_path, tiny_model, name="resume", reward="paused_reward:length_after_pause"
    )
    # Reference: one uninterrupted run.
    ref = eva_process(
        "run", str(manifest), "--no-tracking", "--workdir", str(tmp_path / "ref"), cwd=tmp_path
    )
    _out, err = ref.communicate(timeout=240)
    assert ref.returncode == 0, err
    ref_digests = digests(tmp_path / "ref" / "default" / "resume")

    # The same run, killed while generate-evolved is scoring (the reward pauses there), after
    # generate and create completed; then started again.
    work = tmp_path / "killed" / "default" / "resume"
    proc = eva_process(
        "run",
        str(manifest),
        "--no-tracking",
        "--workdir",
        str(tmp_path / "killed"),
        cwd=tmp_path,
        EVA_TEST_REWARD_PAUSE="1.5",
    )
    step_dir = work / "iter-0" / "generate-evolved"
    deadline = time.time() + 180
    while not step_dir.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / "iter-0" / "create" / "_SUCCESS.json").exists()
    assert step_dir.exists() and not (step_dir / "_SUCCESS.json").exists()
    assert not (work / "iter-0" / "train").exists()

    again = eva_process(
        "run", str(manifest), "--no-tracking", "--workdir", str(tmp_path / "killed"), cwd=tmp_path
    )
    _out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    assert digests(work) == ref_digests
    assert len(ref_digests) >= 8  # prepare, every step and every shard: nothing skipped


def test_unreadable_model_path_fails_before_any_work(tmp_path: Path, tiny_model: Path) -> None:
    manifest = tiny_manifest(tmp_path, tmp_path / "no-such-model")
    proc = eva_process(
        "run", str(manifest), "--no-tracking", "--workdir", str(tmp_path / "runs"), cwd=tmp_path
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "spec.policy.model" in err and "no-such-model" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "default" / "tiny" / "prepare").exists()


def test_bad_prompt_file_names_file_and_line(tmp_path: Path, tiny_model: Path) -> None:
    manifest = tiny_manifest(tmp_path, tiny_model)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    proc = eva_process(
        "run", str(manifest), "--no-tracking", "--workdir", str(tmp_path / "runs"), cwd=tmp_path
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "prompts.jsonl:2: not valid JSON" in err and "Traceback" not in err


def test_phase_commands_run_steps_alone_and_shard_generation(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tiny_manifest(tmp_path, tiny_model, name="phases")
    run_dir = tmp_path / "rd"
    common = ["--spec", str(manifest), "--run-dir", str(run_dir), "--iteration", "0"]
    p = eva_process("phase", "prepare", *common, cwd=tmp_path)
    assert p.wait(60) == 0, p.stderr.read()
    # Two shards as two workers of an Indexed Job; the second one completes the step.
    for i in (1, 0):
        p = eva_process(
            "phase", "generate", *common, "--shard", str(i), "--num-shards", "2", cwd=tmp_path
        )
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    summary = json.loads((run_dir / "iter-0" / "generate" / "_SUCCESS.json").read_text())
    assert summary["num_shards"] == 2 and summary["counts"]["prompts"] == 12
    assert json.loads(out)["prompts"] == 12
    # Create reads both shards back in prompt order.
    p = eva_process("phase", "create", *common, cwd=tmp_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    scores = pd.read_parquet(run_dir / "iter-0" / "create" / "scores.parquet")
    train = pd.read_parquet(run_dir / "prepare" / "train.parquet")
    assert scores["prompt_id"].tolist() == train["prompt_id"].tolist()
    # A step whose inputs are missing says which step to run first.
    p = eva_process(
        "phase",
        "train",
        "--spec",
        str(manifest),
        "--run-dir",
        str(tmp_path / "empty"),
        cwd=tmp_path,
    )
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "run it first" in err


def test_a_changed_spec_is_refused_in_the_same_run_directory(
    tmp_path: Path, tiny_model: Path
) -> None:
    from eva_runtime.errors import EvaError

    run = load_run(tiny_manifest(tmp_path, tiny_model, creator=False, name="changed"))
    run_all(run, tmp_path / "runs", tracking=False)
    run.spec.iterations = 2  # extending a run is allowed: only the new iteration runs
    result = run_all(run, tmp_path / "runs", tracking=False)
    assert len(result.rows) == 2
    run.spec.solver.beta = 0.5
    with pytest.raises(EvaError, match=r"different spec \(spec.solver.beta\)"):
        run_all(run, tmp_path / "runs", tracking=False)
