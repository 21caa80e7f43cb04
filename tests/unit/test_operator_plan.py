"""The planner (operator/eva_operator/plan.py) as a state machine, driven with plain dicts.

``Sim`` is a tiny stand-in for the API server and the Job controller: it applies each plan's
Actions (the status replaces the run's, created Jobs are kept, deleted ones removed) and lets
a test finish, fail or stall a Job's pods.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eva_operator.jobs import StepDefaults
from eva_operator.plan import Actions, ServerFeatures, observe_pod, plan, rfc3339, step_summary
from tiny_run import cluster_spec

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CREATOR = ("generate", "create", "generate-evolved", "train", "evaluate")
BASELINE = ("generate", "train", "evaluate")


def make_run(spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    base = cluster_spec(spec)
    meta = {"name": "demo", "namespace": "team-a", "uid": "uid-1", "generation": 1}
    head = {"apiVersion": "eva.dev/v1alpha1", "kind": "EvaRun"}
    return head | {"metadata": meta, "spec": base, "status": status}


def counts_for(step: str, t: int) -> dict[str, Any]:
    return {
        "prepare": {"prompts": 8, "heldout": 2},
        "generate": {"prompts": 6, "responses": 12, "reward_mean": 0.25 + t, "tokens": 99},
        "create": {"selected": 2, "evolved": 8, "dropped": 1, "buffer": 1, "mixed": 9},
        "generate-evolved": {"responses": 18, "reward_mean": 0.3},
        "train": {"pairs": 10 + t, "train_loss": 0.69},
        "evaluate": {"reward_previous": 0.4, "reward_new": 0.5 + t / 10, "win_rate": 0.6 + t / 10},
        "benchmark": {
            "benchmarks": 1,
            "bench/arena-hard/score": 40.0 + t,
            "bench/arena-hard/ci_low": 30.0,
            "bench/arena-hard/ci_high": 50.5,
            "bench/arena-hard/judged": 12,
            "bench/arena-hard/excluded": 1,
            "bench/arena-hard/errors": 0,
            "bench/arena-hard/win_rate": float("nan"),  # not JSON: never reaches the status
            **({"bench/arena-hard/base_score": 35.0} if t == 0 else {}),
        },
    }[step]


def pod(job: str, i: int, phase: str, message: Any = "", created: datetime = T0, **kw: Any) -> Any:
    """A step pod; kw: waiting=(reason, message), unschedulable=scheduler message."""
    waiting, unschedulable = kw.get("waiting"), kw.get("unschedulable")
    state: dict[str, Any] = {}
    times = kw.get("times")  # (scheduled, started, finished) as datetimes
    if phase in ("Succeeded", "Failed"):
        text = message if isinstance(message, str) else json.dumps(message)
        state = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": text}}
        if times:
            state["terminated"] |= {"startedAt": rfc3339(times[1]), "finishedAt": rfc3339(times[2])}
    elif waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    sched = {"type": "PodScheduled", "status": "False", "message": unschedulable}
    labels = {"batch.kubernetes.io/job-name": job}
    meta = {"name": f"{job}-{i}-x7k2p", "labels": labels, "creationTimestamp": rfc3339(created)}
    containers = [{"name": "step", "state": state}]
    conds = [sched] if unschedulable else []
    if times:
        conds = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(times[0])}
        ]
    return {
        "metadata": meta,
        "status": {"phase": phase, "conditions": conds} | {"containerStatuses": containers},
    }


class Sim:
    def __init__(self, run: dict[str, Any], now: datetime = T0) -> None:
        self.run, self.now = run, now
        self.jobs: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.defaults = StepDefaults()

    @property
    def status(self) -> dict[str, Any]:
        return self.run["status"]

    def plan(self, advance: float = 10) -> Actions:
        acts = plan(*copy.deepcopy((self.run, self.jobs, self.pods)), self.now, self.defaults)
        self.run["status"] = copy.deepcopy(acts.status)
        self.jobs = [j for j in self.jobs if j["metadata"]["name"] not in acts.delete]
        self.pods = [p for p in self.pods if self.job_of(p) not in acts.delete]
        for m in acts.create:
            name = m["metadata"]["name"]
            assert name not in self.names(), f"{name} created twice"
            m = copy.deepcopy(m)
            m["metadata"]["creationTimestamp"] = rfc3339(self.now)
            self.jobs.append(m)
            self.created.append(name)
        self.now += timedelta(seconds=advance)
        return acts

    @staticmethod
    def job_of(p: dict[str, Any]) -> str:
        return p["metadata"]["labels"]["batch.kubernetes.io/job-name"]

    def names(self) -> list[str]:
        return [j["metadata"]["name"] for j in self.jobs]

    def job(self, name: str) -> dict[str, Any]:
        return next(j for j in self.jobs if j["metadata"]["name"] == name)

    def succeed(self, name: str) -> None:
        j = self.job(name)
        labels = j["metadata"]["labels"]
        step, t = labels["eva.dev/step"], int(labels["eva.dev/iteration"])
        n = j["spec"]["completions"]
        for i in range(n):
            msg = {"step": step, "iteration": t, "shard": i, "scope": "shard", "counts": {}}
            if i == n - 1:  # the shard that completes the step writes the step's summary
                msg = {**msg, "scope": "step", "counts": counts_for(step, t)}
                if step == "create":
                    msg["digests"] = {"mixed.parquet": f"d{t}"}
            # Queued 3 s, started 2 s after being scheduled, the shards ran 4 s and 4 + i s.
            made_at = datetime.fromisoformat(j["metadata"]["creationTimestamp"])
            at = [made_at + timedelta(seconds=x) for x in (3, 5, 9 + i)]
            self.pods.append(pod(name, i, "Succeeded", msg, times=at))
        j["status"] = {"succeeded": n, "conditions": [{"type": "Complete", "status": "True"}]}

    def fail(self, name: str, error: str = "CUDA out of memory") -> None:
        step = self.job(name)["metadata"]["labels"]["eva.dev/step"]
        self.pods.append(pod(name, 0, "Failed", {"step": step, "error": error}))
        failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
        self.job(name)["status"] = {"failed": 1, "conditions": [failed]}

    def drive(self, limit: int = 40) -> list[Actions]:
        """Succeed every running Job, and plan, until the run ends."""
        out = []
        for _ in range(limit):
            for j in self.jobs:
                if not j.get("status"):
                    self.succeed(j["metadata"]["name"])
            acts = self.plan()
            out.append(acts)
            if self.status.get("phase") in ("Succeeded", "Failed"):
                return out
        raise AssertionError(f"the run did not end: {self.status}")


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def made(acts: Actions) -> list[str]:
    return [m["metadata"]["name"] for m in acts.create]


def reasons(acts: Actions) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in acts.events]


def started(spec: dict[str, Any] | None = None) -> Sim:
    """A run whose prepare step is done and whose iteration-0 generate Job is running."""
    sim = Sim(make_run(spec))
    sim.plan()
    sim.succeed("demo-i0-prepare")
    assert made(sim.plan()) == ["demo-i0-generate"]
    return sim


def test_a_fresh_run_creates_the_prepare_job_and_is_running() -> None:
    sim = Sim(make_run())
    acts = sim.plan()
    assert made(acts) == ["demo-i0-prepare"]
    assert acts.create[0]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert acts.delete == []
    assert reasons(acts) == [("Normal", "StepStarted")]
    s = sim.status
    assert (s["phase"], s["iteration"], s["step"], s["attempt"]) == ("Running", 0, "prepare", 0)
    assert s["job"] == "demo-i0-prepare"
    assert s["startTime"] == s["stepStartTime"] == rfc3339(T0)
    assert s["observedGeneration"] == 1
    assert s["completed"] == [] and s["history"] == []
    running = cond(s, "Running")
    assert (running["status"], running["reason"]) == ("True", "StepStarted")


def test_creator_enabled_runs_every_step_in_order_and_succeeds() -> None:
    sim = Sim(make_run())
    sim.drive()
    order = ["demo-i0-prepare"] + [f"demo-i{t}-{s}" for t in (0, 1) for s in CREATOR]
    assert sim.created == order
    s = sim.status
    assert s["phase"] == "Succeeded"
    assert s["completed"] == ["prepare"] + [f"{t}/{x}" for t in (0, 1) for x in CREATOR]
    assert "job" not in s and s["completionTime"]
    assert s["reward"] == 0.6 and s["winRate"] == 0.7
    h0, h1 = s["history"]
    assert (h0["iteration"], h1["iteration"]) == (0, 1)
    assert h0["prompts"] == 6 and h0["heldOut"] == 2  # generate's prompts overwrite prepare's
    assert h0["rewardMean"] == 0.25 and h1["rewardMean"] == 1.25
    assert (h0["tokens"], h0["kept"], h0["evolved"], h0["nextPrompts"]) == (99, 2, 8, 9)
    assert (h0["evolvedRewardMean"], h0["trainLoss"], h0["heldOutBefore"]) == (0.3, 0.69, 0.4)
    assert h0["pairs"] == 10 and h1["pairs"] == 11
    assert h0["heldOutReward"] == 0.5 and h1["heldOutReward"] == 0.6
    assert h0["winRate"] == 0.6 and h1["winRate"] == 0.7
    assert h1["model"] == "/artifacts/team-a/demo/iter-1/train/model"
    assert h1["promptSet"] == "/artifacts/team-a/demo/iter-1/create/mixed.parquet"
    assert h1["promptSetDigest"] == "sha256:d1"
    assert set(h1["steps"]) == set(CREATOR)
    assert (h1["steps"]["train"]["job"], h1["steps"]["train"]["attempts"]) == ("demo-i1-train", 1)
    assert cond(s, "Succeeded")["status"] == "True"
    assert cond(s, "Running")["status"] == "False"


def test_each_step_records_what_only_the_cluster_sees() -> None:
    """Job created -> pod scheduled -> container started -> finished, per step: in the
    history (queued, startup, running seconds) and in the actions the metrics observe."""
    sim = Sim(make_run(cluster_spec({"iterations": 1}, shards=2)))
    stages = [st for acts in sim.drive() for st in acts.step_stages]
    (h0,) = sim.status["history"]
    gen = h0["steps"]["generate"]
    # Two shards: the first scheduled at +3 s, the first started at +5 s, the last ended +10 s.
    assert (gen["queuedSeconds"], gen["startupSeconds"], gen["runningSeconds"]) == (3, 2, 5)
    assert h0["steps"]["train"]["runningSeconds"] == 4
    assert ("generate", "queued", 3.0) in stages and ("train", "running", 4.0) in stages
    assert {s for s, _, _ in stages} == {"prepare", *CREATOR}


def test_a_steps_own_time_parts_reach_its_record_only_when_well_formed() -> None:
    from eva_operator.plan import step_parts

    good = {"phases": {"load": 1.23456, "generate": 4, "other": 0.5}, "loads": 2}
    assert step_parts(good) == {
        "partSeconds": {"load": 1.235, "generate": 4.0, "other": 0.5},
        "modelLoads": 2,
    }
    # Whatever else a pod's image wrote is dropped, never copied into the status.
    bad = {
        "phases": {"load": float("nan"), "nope": 1, "train": -1, "write": True, "score": "3"},
        "loads": True,
    }
    assert step_parts(bad) == {}
    assert step_parts({"phases": [1, 2], "loads": -1}) == {}
    assert step_parts({}) == {}


def test_stages_with_missing_or_backward_times_are_left_out() -> None:
    from eva_operator.plan import step_stages

    t = [T0 + timedelta(seconds=x) for x in (3, 5, 9)]
    pods = [observe_pod(pod("j", 0, "Succeeded", "{}", times=t))]
    assert step_stages(rfc3339(T0), pods) == {"queued": 3, "startup": 2, "running": 4}
    assert step_stages(None, pods) == {"startup": 2, "running": 4}
    assert step_stages(rfc3339(T0 + timedelta(seconds=60)), pods) == {"startup": 2, "running": 4}
    assert step_stages(rfc3339(T0), [observe_pod(pod("j", 0, "Succeeded", "{}"))]) == {}
    running = pod("j", 0, "Running")
    running["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": rfc3339(T0)}}
    assert observe_pod(running).started == rfc3339(T0)
    assert observe_pod(running).finished is None


def test_creator_disabled_runs_generate_train_evaluate() -> None:
    sim = Sim(make_run({"creator": {"enabled": False}}))
    acts = sim.drive()
    assert sim.created == ["demo-i0-prepare"] + [f"demo-i{t}-{s}" for t in (0, 1) for s in BASELINE]
    s = sim.status
    assert s["phase"] == "Succeeded"
    assert s["completed"] == ["prepare"] + [f"{t}/{x}" for t in (0, 1) for x in BASELINE]
    assert [h["pairs"] for h in s["history"]] == [10, 11]
    assert [h["heldOutReward"] for h in s["history"]] == [0.5, 0.6]
    assert "promptSet" not in s["history"][0]
    assert s["reward"] == 0.6
    assert ("Normal", "RunSucceeded") in reasons(acts[-1])
    assert ("Normal", "IterationSucceeded") in reasons(acts[-1])


BENCHMARKS = {
    "evaluation": {
        "benchmarks": [
            {
                "suite": "arena-hard",
                "questions": "/data/q.jsonl",
                "answers": "/data/a.jsonl",
                "judge": {"endpoint": {"baseUrl": "http://judge:8000/v1", "model": "j"}},
            }
        ]
    }
}


def test_benchmarks_add_a_benchmark_job_after_evaluate_and_fill_the_history() -> None:
    sim = Sim(make_run({"creator": {"enabled": False}} | BENCHMARKS))
    acts = sim.drive()
    steps = (*BASELINE, "benchmark")
    assert sim.created == ["demo-i0-prepare"] + [f"demo-i{t}-{s}" for t in (0, 1) for s in steps]
    h0, h1 = sim.status["history"]
    assert h0["benchmarks"] == {
        "arena-hard": {
            "score": 40.0,
            "ciLow": 30.0,
            "ciHigh": 50.5,
            "baseScore": 35.0,
            "judged": 12,
            "excluded": 1,
            "errors": 0,
        }
    }
    assert h1["benchmarks"]["arena-hard"]["score"] == 41.0
    assert "baseScore" not in h1["benchmarks"]["arena-hard"]
    # The iteration is complete once its last step, the benchmark, is.
    iteration_done = [e for a in acts for e in a.events if e.reason == "IterationSucceeded"]
    assert [e.message for e in iteration_done] == [
        "iteration 0 complete: arena-hard 40.00",
        "iteration 1 complete: arena-hard 41.00",
    ]
    job = next(j for j in sim.jobs if j["metadata"]["name"] == "demo-i1-benchmark")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "benchmark" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_planning_twice_creates_nothing_the_second_time() -> None:
    sim = Sim(make_run())
    sim.plan()
    before = copy.deepcopy(sim.status)
    acts = sim.plan()
    assert (acts.create, acts.delete, acts.events) == ([], [], [])
    assert not acts.changed(before)


def test_a_job_created_before_a_lost_status_write_is_adopted_not_duplicated() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.succeed("demo-i0-prepare")
    old = copy.deepcopy(sim.run)
    sim.plan()  # creates demo-i0-generate; now pretend its status write was lost
    sim.run = old
    acts = sim.plan()
    assert acts.create == []
    assert sim.status["completed"] == ["prepare"]
    assert sim.names() == ["demo-i0-prepare", "demo-i0-generate"]


def test_a_retry_created_before_a_lost_status_write_is_not_counted_twice() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.fail("demo-i0-prepare")
    old = copy.deepcopy(sim.run)
    assert made(sim.plan()) == ["demo-i0-prepare-r1"]
    sim.run = old  # the status write was lost; demo-i0-prepare-r1 exists
    acts = sim.plan()
    assert acts.create == []
    assert (sim.status["attempt"], sim.status["retries"]) == (1, 1)


def test_a_completed_step_whose_job_is_gone_is_never_recreated() -> None:
    sim = started()
    sim.jobs = [j for j in sim.jobs if j["metadata"]["name"] != "demo-i0-prepare"]  # TTL
    sim.pods = []
    acts = sim.plan()
    assert acts.create == [] and acts.events == []
    assert sim.status["completed"] == ["prepare"]
    assert sim.status["history"][0]["heldOut"] == 2


def test_a_failed_job_is_retried_as_r1_with_a_warning() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.fail("demo-i0-prepare", "disk full")
    acts = sim.plan()
    assert made(acts) == ["demo-i0-prepare-r1"]
    assert acts.create[0]["metadata"]["labels"]["eva.dev/attempt"] == "1"
    warn = [e for e in acts.events if e.reason == "StepRetrying"]
    assert len(warn) == 1 and warn[0].type == "Warning" and "disk full" in warn[0].message
    assert acts.failed_jobs == [("prepare", "BackoffLimitExceeded")]
    assert (sim.status["attempt"], sim.status["retries"]) == (1, 1)
    assert sim.status["job"] == "demo-i0-prepare-r1"
    assert sim.status["phase"] == "Running"
    sim.succeed("demo-i0-prepare-r1")
    acts = sim.plan()
    assert made(acts) == ["demo-i0-generate"]
    assert sim.status["attempt"] == 0
    assert sim.status["history"][0]["steps"]["prepare"]["attempts"] == 2


def test_after_backoff_limit_retries_the_run_fails_with_the_pod_error() -> None:
    sim = Sim(make_run())
    sim.plan()
    for name in ("demo-i0-prepare", "demo-i0-prepare-r1", "demo-i0-prepare-r2"):
        sim.fail(name, f"OOM in {name}")
        acts = sim.plan()
    assert sim.created == ["demo-i0-prepare", "demo-i0-prepare-r1", "demo-i0-prepare-r2"]
    s = sim.status
    assert (s["phase"], s["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert "OOM in demo-i0-prepare-r2" in s["message"]
    assert "3 times" in s["message"]
    assert acts.create == []
    assert ("Warning", "BackoffLimitExceeded") in reasons(acts)
    assert cond(s, "Failed")["status"] == "True"
    assert cond(s, "Running")["status"] == "False"


def test_a_failed_run_stays_failed() -> None:
    sim = Sim(make_run(phase="Failed", reason="DeadlineExceeded", message="late"))
    sim.run["spec"]["iterations"] = 5
    acts = sim.plan()
    assert (acts.create, acts.delete, acts.events) == ([], [], [])
    assert (sim.status["phase"], sim.status["reason"]) == ("Failed", "DeadlineExceeded")


def test_a_pod_pending_past_the_deadline_fails_the_run_and_deletes_the_job() -> None:
    sim = Sim(make_run())
    sim.plan()
    back = ("ImagePullBackOff", 'Back-off pulling image "eva:typo"')
    sim.pods.append(pod("demo-i0-prepare", 0, "Pending", created=T0, waiting=back))
    sim.now = T0 + timedelta(seconds=601)
    acts = sim.plan()
    assert acts.delete == ["demo-i0-prepare"]
    s = sim.status
    assert (s["phase"], s["reason"]) == ("Failed", "PodPendingTooLong")
    assert "ImagePullBackOff" in s["message"] and "eva:typo" in s["message"]
    assert acts.failed_jobs == [("prepare", "PodPendingTooLong")]


def test_an_unschedulable_pod_past_the_deadline_names_the_scheduler_message() -> None:
    sim = Sim(make_run({"runPolicy": {"pendingDeadlineSeconds": 60}}))
    sim.plan()
    why = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    sim.pods.append(pod("demo-i0-prepare", 0, "Pending", created=T0, unschedulable=why))
    sim.now = T0 + timedelta(seconds=61)
    sim.plan()
    assert sim.status["reason"] == "PodPendingTooLong"
    assert "Unschedulable" in sim.status["message"] and why in sim.status["message"]


def test_a_pod_pending_within_the_deadline_changes_nothing() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.pods.append(pod("demo-i0-prepare", 0, "Pending", waiting=("ContainerCreating", "")))
    sim.now = T0 + timedelta(seconds=300)
    before = copy.deepcopy(sim.status)
    acts = sim.plan()
    assert (acts.create, acts.delete, acts.events) == ([], [], [])
    assert sim.status == before


def test_a_pod_still_pulling_its_image_past_the_deadline_is_left_alone() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.pods.append(
        pod("demo-i0-prepare", 0, "Pending", created=T0, waiting=("ContainerCreating", ""))
    )
    sim.now = T0 + timedelta(seconds=3600)
    acts = sim.plan()
    assert (acts.delete, sim.status["phase"]) == ([], "Running")


def test_a_job_that_makes_no_pod_past_the_deadline_fails_the_run() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.jobs[0]["metadata"]["creationTimestamp"] = rfc3339(T0)
    sim.now = T0 + timedelta(seconds=300)
    assert sim.plan().delete == []
    sim.now = T0 + timedelta(seconds=601)
    acts = sim.plan()
    assert acts.delete == ["demo-i0-prepare"]
    assert (sim.status["phase"], sim.status["reason"]) == ("Failed", "PodsNotCreated")
    assert "kubectl describe job demo-i0-prepare" in sim.status["message"]


def test_a_job_held_by_a_queue_is_not_failed_for_having_no_pod() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.jobs[0]["metadata"]["creationTimestamp"] = rfc3339(T0)
    sim.jobs[0]["spec"]["suspend"] = True  # Kueue admits it later
    sim.now = T0 + timedelta(days=1)
    acts = sim.plan()
    assert (acts.delete, sim.status["phase"]) == ([], "Running")


def test_the_run_fails_past_active_deadline_and_deletes_live_jobs() -> None:
    sim = Sim(make_run({"runPolicy": {"activeDeadlineSeconds": 3600}}))
    acts = sim.plan()
    assert acts.create[0]["spec"]["activeDeadlineSeconds"] == 3601
    sim.now = T0 + timedelta(seconds=3601)
    acts = sim.plan()
    assert acts.delete == ["demo-i0-prepare"]
    assert acts.create == []
    assert (sim.status["phase"], sim.status["reason"]) == ("Failed", "DeadlineExceeded")
    assert "3600" in sim.status["message"]


def test_an_invalid_spec_fails_with_the_field_path() -> None:
    sim = Sim(make_run({"generation": {"shards": 0}}))
    acts = sim.plan()
    assert acts.create == []
    assert (sim.status["phase"], sim.status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.generation.shards" in sim.status["message"]
    assert ("Warning", "InvalidSpec") in reasons(acts)


def test_suspend_deletes_the_live_job_and_resume_recreates_the_same_step() -> None:
    sim = started()
    sim.run["spec"]["runPolicy"] = {"suspend": True}
    acts = sim.plan()
    assert acts.delete == ["demo-i0-generate"] and acts.create == []
    assert sim.status["phase"] == "Suspended"
    assert cond(sim.status, "Suspended")["status"] == "True"
    assert cond(sim.status, "Running")["status"] == "False"
    assert reasons(acts) == [("Normal", "Suspended")]
    assert "iteration 0 step generate" in acts.events[0].message
    acts = sim.plan()  # still suspended: nothing more
    assert (acts.create, acts.delete, acts.events) == ([], [], [])
    sim.run["spec"]["runPolicy"] = {"suspend": False}
    acts = sim.plan()
    assert made(acts) == ["demo-i0-generate"]
    assert sim.status["phase"] == "Running"
    assert ("Normal", "Resumed") in reasons(acts)
    assert cond(sim.status, "Suspended")["status"] == "False"
    assert cond(sim.status, "Running")["status"] == "True"
    assert sim.status["completed"] == ["prepare"]


def test_a_job_still_being_deleted_is_waited_for() -> None:
    sim = started()
    sim.run["spec"]["runPolicy"] = {"suspend": True}
    gone = copy.deepcopy(sim.job("demo-i0-generate"))
    sim.plan()
    # The Job is still terminating (foreground deletion) when the run is resumed.
    gone["metadata"]["deletionTimestamp"] = rfc3339(sim.now)
    sim.jobs.append(gone)
    sim.run["spec"]["runPolicy"] = {"suspend": False}
    acts = sim.plan()
    assert acts.create == [] and acts.delete == []
    sim.jobs = []
    acts = sim.plan()
    assert made(acts) == ["demo-i0-generate"]


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    sim = Sim(make_run({"iterations": 1, "creator": {"enabled": False}}))
    sim.plan()
    first = cond(sim.status, "Running")
    assert first["lastTransitionTime"] == rfc3339(T0)
    sim.succeed("demo-i0-prepare")
    sim.plan()
    second = cond(sim.status, "Running")
    assert second["message"] != first["message"]  # a new step, same status
    assert second["lastTransitionTime"] == rfc3339(T0)
    sim.drive()
    end = cond(sim.status, "Running")
    assert end["status"] == "False"
    assert end["lastTransitionTime"] == sim.status["completionTime"] != rfc3339(T0)


def continued() -> tuple[Sim, Actions]:
    sim = Sim(make_run())
    sim.drive()
    assert sim.status["phase"] == "Succeeded"
    sim.run["spec"]["iterations"] = 3
    sim.run["metadata"]["generation"] = 2
    return sim, sim.plan()


def test_more_iterations_after_success_continue_with_the_next_generate() -> None:
    sim, acts = continued()
    assert made(acts) == ["demo-i2-generate"]
    assert sim.status["phase"] == "Running"
    assert (sim.status["iteration"], sim.status["step"]) == (2, "generate")
    assert sim.status["observedGeneration"] == 2
    assert len(sim.status["completed"]) == 11
    sim.drive()
    assert sim.status["phase"] == "Succeeded"
    assert [h["iteration"] for h in sim.status["history"]] == [0, 1, 2]


def test_a_continued_run_no_longer_reports_succeeded() -> None:
    sim, _ = continued()
    assert sim.status["phase"] == "Running"
    assert cond(sim.status, "Running")["status"] == "True"
    # A running run must not also say it succeeded (kubectl wait --for=condition=Succeeded).
    assert cond(sim.status, "Succeeded")["status"] == "False"
    assert "completionTime" not in sim.status


def test_step_summary_prefers_the_step_message_else_merges_the_shard_counts() -> None:
    shard = [
        observe_pod(pod("j", 0, "Succeeded", {"scope": "shard", "counts": c}))
        for c in (
            {"prompts": 3, "responses": 6, "tokens": 10, "truncated": 1, "reward_mean": 0.2},
            {"prompts": 4, "responses": 8, "tokens": 5, "truncated": 0, "reward_mean": 0.9},
        )
    ]
    summed = step_summary([*shard, observe_pod(pod("j", 2, "Succeeded", "not json"))])
    counts = summed["counts"]
    assert {k: counts[k] for k in ("prompts", "responses", "tokens", "truncated")} == {
        "prompts": 7,
        "responses": 14,
        "tokens": 15,
        "truncated": 1,
    }
    assert counts["reward_mean"] == pytest.approx((0.2 * 6 + 0.9 * 8) / 14)  # as the shard would
    whole = {"scope": "step", "counts": {"prompts": 9, "reward_mean": 0.5}}
    assert step_summary([shard[0], observe_pod(pod("j", 1, "Succeeded", whole))]) == whole
    assert step_summary([]) == {}
    # A termination message nested deeper than the JSON decoder's recursion limit (a step
    # image may write anything; the kubelet keeps 4 KiB): ignored, not a crash.
    deep = "[" * 2000 + "]" * 2000
    assert step_summary([observe_pod(pod("j", 3, "Succeeded", deep)), shard[0]])["counts"]
    from eva_operator.plan import JobView, failure_message

    failed = observe_pod(pod("j", 4, "Failed", deep))
    job = JobView(name="j", step="train", iteration=0, attempt=0, state="failed")
    assert failure_message(job, [failed]) == deep[-1000:]  # the raw tail, as for any text


def test_observe_pod_reads_waiting_reasons_and_unschedulable_conditions() -> None:
    v = observe_pod(pod("demo-i0-train", 0, "Pending", waiting=("ErrImagePull", "not found")))
    assert (v.job, v.phase, v.waiting_reason) == ("demo-i0-train", "Pending", "ErrImagePull")
    assert v.waiting_message == "not found"
    assert v.unschedulable == "" and v.created == rfc3339(T0)
    u = observe_pod(pod("demo-i0-train", 0, "Pending", unschedulable="0/1 nodes: taint"))
    assert u.unschedulable == "0/1 nodes: taint" and u.waiting_reason == ""
    f = observe_pod(pod("demo-i0-train", 0, "Failed", {"error": "x"}))
    assert (f.exit_code, json.loads(f.termination_message)) == (1, {"error": "x"})
    legacy = pod("old", 0, "Running")
    legacy["metadata"]["labels"] = {"job-name": "old"}
    assert observe_pod(legacy).job == "old"


def test_a_run_with_no_artifact_claim_anywhere_fails_as_invalid_spec() -> None:
    sim = Sim(make_run({"storage": {"claimName": None}}))
    acts = sim.plan()
    assert acts.create == []
    assert (sim.status["phase"], sim.status["reason"]) == ("Failed", "InvalidSpec")
    assert sim.status["message"].startswith("spec.storage.claimName: required in this cluster")
    assert ("Warning", "InvalidSpec") in reasons(acts)
    sim.defaults = StepDefaults(claim_name="shared")  # the install's default claim is enough
    sim2 = Sim(make_run({"storage": {"claimName": None}}))
    sim2.defaults = sim.defaults
    assert made(sim2.plan()) == ["demo-i0-prepare"]


def test_an_old_server_fails_sharded_and_queued_runs_before_any_job() -> None:
    old = ServerFeatures((1, 20))
    for spec, field in (
        ({}, "spec.generation.shards: 2 needs Indexed Jobs"),
        ({"generation": {"shards": 1}, "resources": {"queueName": "gpus"}}, "queueName"),
    ):
        run = make_run(spec)
        acts = plan(run, [], [], T0, StepDefaults(), server=old)
        assert acts.create == [], field
        assert acts.status["reason"] == "UnsupportedByCluster"
        assert field in acts.status["message"] and "Kubernetes 1.20" in acts.status["message"]
    unsharded = make_run({"generation": {"shards": 1}})
    assert made(plan(unsharded, [], [], T0, StepDefaults(), server=old)) == ["demo-i0-prepare"]
    assert made(plan(make_run(), [], [], T0, StepDefaults(), server=ServerFeatures((1, 22))))


def failed_create(job: str, message: str) -> dict[str, Any]:
    return {
        "reason": "FailedCreate",
        "type": "Warning",
        "message": message,
        "involvedObject": {"kind": "Job", "name": job},
        "lastTimestamp": rfc3339(T0),
    }


def test_refused_pods_block_the_step_with_the_jobs_own_message_then_clear() -> None:
    sim = Sim(make_run())
    sim.plan()
    refused = 'Error creating: serviceaccount "eva-step" not found'
    events = [failed_create("demo-i0-prepare", refused), failed_create("other", "no")]
    args = (sim.run, sim.jobs, sim.pods, T0 + timedelta(seconds=5), StepDefaults())
    acts = plan(*copy.deepcopy(args), events=events)
    blocked = cond(acts.status, "StepBlocked")
    assert (blocked["status"], blocked["reason"]) == ("True", "PodsNotCreated")
    assert blocked["message"] == f"Job demo-i0-prepare cannot create its pods: {refused}"
    assert reasons(acts) == [("Warning", "PodsNotCreated")]
    assert acts.status["phase"] == "Running"
    # Planned again with the same refusal: nothing new to say.
    again = plan({**sim.run, "status": acts.status}, sim.jobs, sim.pods, T0, events=events)
    assert again.events == [] and again.status == acts.status
    # The pods appear (the account was created): unblocked, not failed.
    sim.run["status"] = acts.status
    sim.pods.append(pod("demo-i0-prepare", 0, "Running"))
    acts = sim.plan()
    cleared = cond(acts.status, "StepBlocked")
    assert (cleared["status"], cleared["reason"]) == ("False", "Progressing")


def test_a_pod_that_cannot_start_blocks_the_step_before_its_deadline() -> None:
    sim = Sim(make_run())
    sim.plan()
    sim.pods.append(pod("demo-i0-prepare", 0, "Pending", waiting=("ImagePullBackOff", "no tag")))
    acts = sim.plan()
    blocked = cond(acts.status, "StepBlocked")
    assert (blocked["status"], blocked["reason"]) == ("True", "PodPending")
    assert "ImagePullBackOff: no tag" in blocked["message"]
    assert acts.status["phase"] == "Running"


def test_every_status_the_planner_writes_validates_against_the_generated_schema() -> None:
    """Whole runs (eva and the baseline, a retry, suspension, a pod pending too long, refused
    pods): every status validates against the CRD's status schema (generated from
    eva_runtime.status) and parses as RunStatus, so the API server would prune nothing."""
    from eva_runtime.crd import status_schema
    from eva_runtime.status import RunStatus
    from schema_check import validate

    schema = status_schema()
    seen: list[dict[str, Any]] = []

    def check(sim: Sim) -> None:
        status = copy.deepcopy(sim.status)
        assert validate(status, schema, "status") == [], status
        RunStatus.model_validate(status)
        seen.append(status)

    for spec in ({}, {"creator": {"enabled": False}}, BENCHMARKS):
        sim = Sim(make_run(spec))
        for _ in range(40):
            for j in sim.jobs:
                if not j.get("status"):
                    sim.succeed(j["metadata"]["name"])
            sim.plan()
            check(sim)
            if sim.status["phase"] == "Succeeded":
                break
    sim = Sim(make_run())
    sim.plan()
    sim.fail("demo-i0-prepare")
    sim.plan()
    check(sim)
    sim.run["spec"]["runPolicy"] = {"suspend": True}
    sim.plan()
    check(sim)
    sim.run["spec"]["runPolicy"] = {"suspend": False}
    sim.plan()
    check(sim)
    refused = [failed_create("demo-i0-prepare-r1", "serviceaccount not found")]
    acts = plan(sim.run, sim.jobs, [], sim.now, StepDefaults(), events=refused)
    sim.run["status"] = acts.status
    check(sim)
    sim.pods.append(pod("demo-i0-prepare-r1", 0, "Pending", waiting=("ErrImagePull", "x")))
    sim.now += timedelta(seconds=700)
    sim.plan()
    check(sim)
    assert sim.status["phase"] == "Failed"
    keys = {k for s in seen for k in s} | {k for s in seen for h in s["history"] for k in h}
    assert {"history", "conditions", "retries", "heldOutReward", "promptSetDigest"} <= keys
    assert "benchmarks" in keys


def test_the_next_wake_is_the_nearest_deadline_or_a_recheck_of_a_podless_job() -> None:
    from eva_operator.plan import NO_POD_RECHECK_SECONDS, next_wake

    sim = Sim(make_run({"runPolicy": {"activeDeadlineSeconds": 3600}}))
    sim.plan()
    sim.jobs[0]["metadata"]["creationTimestamp"] = rfc3339(T0)
    now = T0 + timedelta(seconds=100)
    # No pod yet: look again soon (FailedCreate Events), before any deadline.
    assert next_wake(sim.run, sim.status, sim.jobs, [], now) == NO_POD_RECHECK_SECONDS
    # A pending pod: its pending deadline (600 s, the model's default) from its creation.
    pending = [pod("demo-i0-prepare", 0, "Pending", created=T0)]
    assert next_wake(sim.run, sim.status, sim.jobs, pending, now) == 600 - 100 + 0.5
    sim.run["spec"]["runPolicy"]["activeDeadlineSeconds"] = 300
    assert next_wake(sim.run, sim.status, sim.jobs, pending, now) == 300 - 100 + 0.5
    running = [pod("demo-i0-prepare", 0, "Running")]
    sim.run["spec"]["runPolicy"] = {"pendingDeadlineSeconds": 60}
    assert next_wake(sim.run, sim.status, sim.jobs, running, now) is None
    done = {**sim.status, "phase": "Succeeded"}
    assert next_wake(sim.run, done, sim.jobs, pending, now) is None


def test_a_refused_job_create_is_classified_without_io() -> None:
    from eva_operator.plan import job_refusal

    assert job_refusal(409, "already exists") == "exists"
    assert job_refusal(403, "exceeded quota: compute, requested: nvidia.com/gpu=8") == "retry"
    assert job_refusal(403, "forbidden: cannot set blockOwnerDeletion") == "rejected"
    assert job_refusal(422, "spec.template.spec.affinity: Invalid value") == "rejected"
    assert job_refusal(500, "etcdserver: request timed out") == "retry"
