"""The operator against KMock's Kubernetes API, end to end: each Job's real `eva phase`
command runs on this machine over a shared "PVC" folder; the harness plays the Job
controller and the kubelet (see tests/operator_harness.py)."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest

from eva_runtime.timing import STEP_PARTS
from operator_harness import (
    EVENTS,
    JOBS,
    Outcome,
    created_names,
    live,
    wait_for,
)
from prom_tools import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]

CREATOR_STEPS = ("generate", "create", "generate-evolved", "train", "evaluate")


def reasons(env, name: str = "tiny") -> list[str]:
    return [
        e["reason"]
        for e in live(env.cluster, EVENTS)
        if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "EvaRun"
    ]


def events(env, reason: str) -> list[str]:
    return [e["message"] for e in live(env.cluster, EVENTS) if e["reason"] == reason]


def metric(op, name: str, **labels: str) -> float:
    value = op.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_an_evarun_runs_to_succeeded_through_two_iterations(env) -> None:
    """Sharded generation, the creator, training and evaluation, with real subprocesses."""
    env.controller.in_process = False  # the container command exactly as a pod runs it
    op = await env.start_operator()
    await env.api.apply_run(env.manifest(iterations=2, generation={"shards": 2}))
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 500)

    assert status["phase"] == "Succeeded", status.get("message")
    expected = ["tiny-i0-prepare"] + [f"tiny-i{t}-{s}" for t in range(2) for s in CREATOR_STEPS]
    assert sorted(created_names(env.cluster, JOBS)) == sorted(expected)
    assert status["completed"] == ["prepare"] + [
        f"{t}/{s}" for t in range(2) for s in CREATOR_STEPS
    ]
    # Sharded steps ran as Indexed Jobs with two pods.
    gen = next(j for j in live(env.cluster, JOBS) if j["metadata"]["name"] == "tiny-i1-generate")
    assert gen["spec"]["completionMode"] == "Indexed" and gen["spec"]["completions"] == 2
    assert (env.controller.artifacts / "default/tiny/iter-1/generate/shard-00001-of-00002").is_dir()
    # History per iteration, filled from the steps' termination messages.
    assert [h["iteration"] for h in status["history"]] == [0, 1]
    for h in status["history"]:
        assert set(h["steps"]) >= set(CREATOR_STEPS)
        assert h["prompts"] > 0 and h["responses"] == h["prompts"] * 3
        assert h["evolved"] > 0 and h["pairs"] > 0
        assert isinstance(h["rewardMean"], float) and isinstance(h["heldOutReward"], float)
        assert 0.0 <= h["winRate"] <= 1.0
        assert h["model"] == f"/artifacts/default/tiny/iter-{h['iteration']}/train/model"
        assert h["promptSetDigest"].startswith("sha256:")
    assert status["history"][0]["steps"]["prepare"]["attempts"] == 1
    assert status["reward"] == status["history"][1]["heldOutReward"]
    assert (env.controller.artifacts / "default/tiny/iter-1/train/model/config.json").exists()
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Running"]["status"] == "False"
    assert status["observedGeneration"] == 1
    # Typed events on every transition (posted just after the status).
    await wait_for(lambda: "RunSucceeded" in reasons(env), 10, "the RunSucceeded event")
    rs = reasons(env)
    assert rs.count("StepStarted") == 11, events(env, "StepStarted")
    assert rs.count("StepSucceeded") == 11, events(env, "StepSucceeded")
    assert rs.count("IterationSucceeded") == 2 and rs.count("RunSucceeded") == 1
    assert metric(op, "eva_operator_jobs_created_total", step="generate") == 2
    await wait_for(lambda: metric(op, "eva_operator_runs", phase="Succeeded") == 1, 10, "metric")
    assert metric(op, "eva_operator_step_duration_seconds_count", step="train") == 2
    # What only the cluster sees, per step: queued, startup, running (whole seconds, as the
    # API's timestamps are), in the history and the stage histogram.
    for h in status["history"]:
        for record in h["steps"].values():
            assert {"queuedSeconds", "startupSeconds", "runningSeconds"} <= set(record)
            assert min(record["queuedSeconds"], record["runningSeconds"]) >= 0
            # ... and where the step's own time went, as the pod measured it.
            assert set(record["partSeconds"]) == set(STEP_PARTS), record
            assert isinstance(record["modelLoads"], int)
    for stage in ("queued", "startup", "running"):
        assert metric(op, "eva_operator_step_stage_seconds_count", step="train", stage=stage) == 2


async def test_pairwise_rewards_and_sppo_run_through_the_operator(env) -> None:
    """The pairwise reward (a python preference) and the sppo solver, step by step as Jobs:
    the pods' rollouts carry win probabilities, train's pairs carry them to SPPO."""
    await env.start_operator()
    spec = {
        "rewardModel": {"type": "pairwise", "preference": "python",
                        "function": "eva_runtime.rewards:length_preference"},
        "solver": {"algorithm": "sppo"},
    }  # fmt: skip
    await env.api.apply_run(env.manifest(iterations=1, **spec))
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 400)
    assert status["phase"] == "Succeeded", status.get("message")
    (h,) = status["history"]
    assert h["pairs"] > 0 and 0.0 <= h["winRate"] <= 1.0
    train = env.controller.artifacts / "default/tiny/iter-0/train"
    summary = json.loads((train / "_SUCCESS.json").read_text())
    assert summary["algorithm"] == "sppo" and summary["counts"]["trained"] == 1
    import pandas as pd

    pairs = pd.read_parquet(train / "pairs.parquet")
    assert (pairs["chosen_prob"] > pairs["rejected_prob"]).all()


async def test_a_failed_step_is_retried_from_the_last_complete_step(env, rules) -> None:
    env.controller.decide = rules({("train", 0): Outcome("fail", "CUDA error: out of memory")})
    op = await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False))
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 120)

    assert status["phase"] == "Succeeded", status.get("message")
    names = created_names(env.cluster, JOBS)
    assert "tiny-i0-train" in names and "tiny-i0-train-r1" in names
    assert names.count("tiny-i0-generate") == 1  # the complete step did not run again
    assert status["history"][0]["steps"]["train"]["attempts"] == 2
    assert status["retries"] == 1
    (retry,) = events(env, "StepRetrying")
    assert "out of memory" in retry and "attempt 1 of 3" in retry
    assert (
        metric(op, "eva_operator_jobs_failed_total", step="train", reason="BackoffLimitExceeded")
        == 1
    )


async def test_a_step_that_fails_every_time_fails_the_run_with_its_error(env) -> None:
    await env.start_operator()
    doc = env.manifest(creator=False, runPolicy={"backoffLimit": 1})
    doc["spec"]["policy"]["model"] = str(env.tmp / "no-such-model")
    await env.api.apply_run(doc)
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 120)

    assert status["phase"] == "Failed"
    assert status["reason"] == "BackoffLimitExceeded"
    assert "step generate failed 2 times" in status["message"]
    assert "no-such-model" in status["message"]  # the pod's own error, via its termination message
    assert created_names(env.cluster, JOBS).count("tiny-i0-generate-r1") == 1
    assert "tiny-i0-generate-r2" not in created_names(env.cluster, JOBS)
    conds = {c["type"]: c for c in status["conditions"]}
    assert (
        conds["Failed"]["status"] == "True" and conds["Failed"]["reason"] == "BackoffLimitExceeded"
    )
    # Events and metrics follow the status write.
    await wait_for(lambda: "BackoffLimitExceeded" in reasons(env), 10, "the failure Event")


async def test_a_pod_pending_past_the_deadline_fails_the_run_fast(env, rules) -> None:
    env.controller.decide = rules(
        {("generate", 0): Outcome("pending", waiting_reason="ImagePullBackOff")}
    )
    await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False, runPolicy={"pendingDeadlineSeconds": 2}))
    status = await env.wait_phase("tiny", ("Failed",), 60)

    assert status["reason"] == "PodPendingTooLong"
    assert "ImagePullBackOff" in status["message"] and "tiny-i0-generate" in status["message"]
    await wait_for(
        lambda: (
            not any(j["metadata"]["name"] == "tiny-i0-generate" for j in live(env.cluster, JOBS))
        ),
        10,
        "the stuck Job to be deleted",
    )


async def test_suspend_stops_the_step_and_resume_continues_it(env, rules) -> None:
    hold = Outcome("hold")
    env.controller.decide = rules({("generate", 0): hold})
    await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False))
    await wait_for(lambda: "tiny-i0-generate" in env.controller.started, 60, "generate to start")

    await env.api.patch_run("default", "tiny", {"spec": {"runPolicy": {"suspend": True}}})
    status = await env.wait_phase("tiny", ("Suspended",), 30)
    await wait_for(
        lambda: (
            not any(j["metadata"]["name"] == "tiny-i0-generate" for j in live(env.cluster, JOBS))
        ),
        10,
        "the running Job to be stopped",
    )
    assert status["completed"] == ["prepare"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"

    await env.api.patch_run("default", "tiny", {"spec": {"runPolicy": {"suspend": False}}})
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 120)
    assert status["phase"] == "Succeeded", status.get("message")
    names = created_names(env.cluster, JOBS)
    assert names.count("tiny-i0-prepare") == 1  # nothing complete was lost or redone
    assert env.controller.started.count("tiny-i0-generate") == 2  # stopped, then run again
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "False"
    rs = reasons(env)
    assert "Suspended" in rs and "Resumed" in rs


async def test_an_operator_restart_mid_step_creates_no_duplicate_and_loses_nothing(
    env, rules
) -> None:
    hold = Outcome("hold")
    env.controller.decide = rules({("train", 0): hold})
    first = await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False))
    await wait_for(lambda: "tiny-i0-train" in env.controller.started, 60, "train to start")

    await first.stop()
    hold.release.set()  # the step finishes while no operator is running
    await wait_for(
        lambda: ("tiny-i0-train", 0) in env.controller.finished, 60, "train to finish unobserved"
    )
    await env.start_operator()
    status = await env.wait_phase("tiny", ("Succeeded", "Failed"), 120)

    assert status["phase"] == "Succeeded", status.get("message")
    names = created_names(env.cluster, JOBS)
    assert sorted(names) == sorted(
        ["tiny-i0-prepare", "tiny-i0-generate", "tiny-i0-train", "tiny-i0-evaluate"]
    )
    assert sorted(env.controller.started) == sorted(names)  # each Job ran once
    assert status["history"][0]["pairs"] > 0  # the unobserved step's summary still arrived


async def test_an_invalid_evarun_is_refused_by_the_admission_handler(env) -> None:
    port = free_port()
    await env.start_operator(EVA_WEBHOOK_MODE="insecure", EVA_WEBHOOK_PORT=str(port))
    url = f"http://127.0.0.1:{port}/admit"

    async def review(operation: str, obj: dict, old: dict | None = None) -> dict:
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "eva.dev", "version": "v1alpha1", "kind": "EvaRun"},
                "resource": {"group": "eva.dev", "version": "v1alpha1", "resource": "evaruns"},
                "name": obj["metadata"]["name"],
                "namespace": "default",
                "operation": operation,
                "userInfo": {"username": "tester"},
                "object": obj,
                "oldObject": old,
                "dryRun": False,
            },
        }
        async with aiohttp.ClientSession() as s:
            for _ in range(50):  # the webhook server starts with the operator
                try:
                    async with s.post(url, json=body) as r:
                        return (await r.json())["response"]
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        raise AssertionError("the webhook server did not answer")

    good = env.manifest()
    good["metadata"]["namespace"] = "default"
    assert (await review("CREATE", good))["allowed"] is True

    bad = json.loads(json.dumps(good))
    bad["spec"]["iterations"] = 0
    bad["spec"]["creator"]["informativeness"] = "loudness"
    answer = await review("CREATE", bad)
    assert answer["allowed"] is False
    msg = answer["status"]["message"]
    assert "spec.iterations: must be greater than or equal to 1" in msg
    assert "spec.creator.informativeness: must be one of" in msg

    started = json.loads(json.dumps(good))
    started["status"] = {"phase": "Running", "iteration": 0}
    changed = json.loads(json.dumps(good))
    changed["spec"]["solver"]["beta"] = 0.5
    answer = await review("UPDATE", changed, started)
    assert (
        answer["allowed"] is False
        and "spec.solver.beta: cannot change" in answer["status"]["message"]
    )
    longer = json.loads(json.dumps(good))
    longer["spec"]["iterations"] = 5
    assert (await review("UPDATE", longer, started))["allowed"] is True


async def test_twenty_evaruns_at_once_all_finish(env) -> None:
    op = await env.start_operator()
    names = [f"run-{i:02d}" for i in range(20)]
    await asyncio.gather(
        *(env.api.apply_run(env.manifest(n, creator=False, prompts=8)) for n in names)
    )
    await wait_for(
        lambda: all(env.status(n).get("phase") in ("Succeeded", "Failed") for n in names),
        500,
        "20 runs to finish",
        interval=0.5,
    )
    failed = {
        n: env.status(n).get("message") for n in names if env.status(n)["phase"] != "Succeeded"
    }
    assert not failed
    assert len(created_names(env.cluster, JOBS)) == 20 * 4
    for n in names:
        assert (env.controller.artifacts / "default" / n / "iter-0/evaluate/_SUCCESS.json").exists()
    await wait_for(
        lambda: metric(op, "eva_operator_runs", phase="Succeeded") == 20, 10, "the runs metric"
    )


async def test_deleting_an_evarun_removes_its_jobs(env, rules) -> None:
    hold = Outcome("hold")
    env.controller.decide = rules({("generate", 0): hold})
    op = await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False))
    await wait_for(lambda: "tiny-i0-generate" in env.controller.started, 60, "generate to start")

    await env.api.delete_run("default", "tiny")
    await wait_for(lambda: not live(env.cluster, JOBS), 20, "the run's Jobs to be deleted")
    await wait_for(lambda: env.status("tiny") == {}, 20, "the EvaRun to go (finalizer released)")
    # The deleted run's series are gone.
    assert (
        op.metrics.registry.get_sample_value(
            "eva_operator_run_iteration", {"namespace": "default", "run": "tiny"}
        )
        is None
    )
