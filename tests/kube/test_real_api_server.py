"""The chart and the operator on a real Kubernetes API server (see tests/kube_cluster.py).

What KMock cannot show and these tests do: the CRD accepted and Established, structural-
schema defaults and pruning, 422s, RBAC (the operator runs with exactly the chart's rules and
any refusal fails the test), the webhook called by the API server over TLS, the real Job
controller and garbage collector."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import NAMESPACE, RELEASE
from eva_runtime.spec import parse_run
from judge_stub import always, judge_stub
from operator_harness import Outcome, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]
BENCH = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "data" / "bench"


def leaves(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: doc}


# --------------------------------------------------------------------------- install


async def test_the_default_and_namespaced_installs_are_accepted(
    control_plane, installed, namespaced_install
) -> None:
    cp = control_plane
    crd = json.loads(cp.kubectl("get", "crd/evaruns.eva.dev", "-o", "json").stdout)
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds["Established"] == "True" and conds["NamesAccepted"] == "True"
    for kind, name in (
        ("deployment", RELEASE),
        ("serviceaccount", RELEASE),
        ("serviceaccount", "eva-step"),
        ("service", f"{RELEASE}-webhook"),
    ):
        cp.kubectl("get", "-n", NAMESPACE, kind, name)
    # The namespaced values in their own namespace, beside the cluster-wide install.
    role = json.loads(cp.kubectl("get", "-n", "eva-team", "role", RELEASE, "-o", "json").stdout)
    assert any("evaruns/finalizers" in r["resources"] for r in role["rules"])


async def test_printer_columns_and_server_side_defaults(kenv) -> None:
    doc = kenv.manifest("cols")
    code, stored = await kenv.create(doc)
    assert code == 201, stored
    # Every default the server filled in is the model's default.
    expected = leaves(parse_run(doc).model_dump(by_alias=True, mode="json")["spec"])
    filled = leaves(stored["spec"])
    wrong = {k: (v, expected.get(k)) for k, v in filled.items() if expected.get(k) != v}
    assert not wrong, f"server default != model default: {wrong}"
    # ... and every scalar default of the model is filled (lists and maps stay absent).
    unfilled = [k for k, v in expected.items() if v not in (None, [], {}) and k not in filled]
    assert not unfilled, f"defaults the server left out: {unfilled}"
    assert stored["spec"]["generation"]["temperature"] == 0.7
    assert stored["spec"]["creator"]["sampling"] == "importanceWeighted"
    await kenv.api.ok(
        "PATCH",
        kenv.path("cols", "status"),
        {"status": {"phase": "Running", "iteration": 1, "step": "train", "reward": 0.25}},
    )
    table = kenv.cp.kubectl("get", "evaruns", "-n", kenv.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "ITERATION", "STEP", "REWARD", "AGE"]
    assert table[1].split()[:5] == ["cols", "Running", "1", "train", "0.25"]


async def test_a_schema_violation_is_refused_with_422_naming_the_field(kenv) -> None:
    doc = kenv.manifest("bad")
    doc["spec"]["generation"]["samplesPerPrompt"] = "six"
    doc["spec"]["solver"]["algorithm"] = "sgd"
    code, data = await kenv.create(doc)
    assert code == 422, data
    assert "spec.generation.samplesPerPrompt" in data["message"]
    assert "spec.solver.algorithm" in data["message"]
    # kubectl's own check (from the server's OpenAPI), then the server's with it turned off.
    out = kenv.cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0 and "samplesPerPrompt" in out.stderr
    out = kenv.cp.kubectl(
        "apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(doc), check=False
    )
    assert out.returncode != 0 and "spec.solver.algorithm" in out.stderr, out.stderr


# --------------------------------------------------------------------------- whole runs


async def test_an_evarun_succeeds_through_two_iterations_and_no_status_key_is_pruned(
    kenv,
) -> None:
    # An arena-hard benchmark judged by a local server whose key comes from a Secret.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "judge-key"},
        "stringData": {"key": "sk-test-123"},
    }
    code, data = await kenv.api.call("POST", f"/api/v1/namespaces/{kenv.namespace}/secrets", secret)
    assert code == 201, data
    judge = judge_stub(always("[[B>A]]"))
    stub = judge.__enter__()
    benchmark = {
        "suite": "arena-hard",
        "questions": str(BENCH / "arena-hard-questions.jsonl"),
        "answers": str(BENCH / "arena-hard-baseline.jsonl"),
        "limit": 2,
        "maxNewTokens": 6,
        "judge": {
            "endpoint": {
                "baseUrl": stub.url,
                "model": "stub",
                "apiKeySecret": {"name": "judge-key", "key": "key"},
            }
        },
    }
    op = await kenv.start_operator()
    try:
        doc = kenv.manifest(iterations=2, creator=True, evaluation={"benchmarks": [benchmark]})
        code, data = await kenv.create(doc)
        assert code == 201, data
        status = await kenv.wait_phase("tiny", ("Succeeded", "Failed"), 400)
    finally:
        judge.__exit__(None, None, None)
    assert status["phase"] == "Succeeded", status.get("message")
    # Base and new policy in iteration 0, the new one in iteration 1: 2 games per question.
    assert len(stub.requests) == 3 * 2 * 2
    assert set(stub.authorizations) == {"Bearer sk-test-123"}
    bench = [h["benchmarks"]["arena-hard"] for h in status["history"]]
    assert [b["score"] for b in bench] == [50.0, 50.0]  # always B: the two games cancel
    assert bench[0]["baseScore"] == 50.0 and "baseScore" not in bench[1]
    assert bench[0]["judged"] == 4 and bench[0]["ciLow"] <= bench[0]["ciHigh"]
    steps = ("generate", "create", "generate-evolved", "train", "evaluate", "benchmark")
    assert status["completed"] == ["prepare"] + [f"{t}/{s}" for t in range(2) for s in steps]
    names = sorted(j["metadata"]["name"] for j in await kenv.jobs("tiny"))
    assert names == sorted(
        ["tiny-i0-prepare"] + [f"tiny-i{t}-{s}" for t in range(2) for s in steps]
    )
    # The real Job controller completed each Job from the pods' real commands.
    for job in await kenv.jobs("tiny"):
        assert job["status"].get("succeeded") == 1, job["status"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "EvaRun"
    assert [h["iteration"] for h in status["history"]] == [0, 1]
    assert status["history"][1]["heldOutReward"] == status["reward"]
    assert (kenv.node.artifacts / kenv.namespace / "tiny/iter-1/train/model/config.json").exists()
    # Every status write came back whole: the server's structural schema pruned nothing.
    writes = [
        e
        for e in kenv.operator_requests()
        if e.get("objectRef", {}).get("subresource") == "status" and e["verb"] == "patch"
    ]
    # 409: the run changed since it was read (kopf's own patches); the operator plans again.
    assert {e["responseStatus"]["code"] for e in writes} <= {200, 409}
    writes = [e for e in writes if e["responseStatus"]["code"] == 200]
    assert len(writes) >= 12
    for e in writes:
        sent = leaves(e["requestObject"].get("status") or {})
        kept = leaves(e["responseObject"].get("status") or {})
        lost = [k for k, v in sent.items() if v is not None and k not in kept]
        # Lists are compared whole (conditions, history): leaves() stops at them.
        assert not lost, f"pruned by the server: {lost}"
        for k, v in sent.items():
            if v is not None:
                assert kept[k] == v, (k, v, kept[k])
    assert "RunSucceeded" in {e["reason"] for e in await kenv.events()}
    assert op.alive()


async def test_a_failed_pod_is_retried_by_a_new_job(kenv) -> None:
    fails = {"tiny-i0-generate"}

    def decide(pod: dict) -> Outcome:
        job = pod["metadata"]["labels"]["job-name"]
        if job in fails:
            fails.discard(job)
            return Outcome("fail", message="CUDA error: an illegal memory access")
        return Outcome()

    kenv.node.decide = decide
    await kenv.start_operator()
    await kenv.create(kenv.manifest())
    status = await kenv.wait_phase("tiny", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status.get("message")
    jobs = {j["metadata"]["name"]: j for j in await kenv.jobs("tiny")}
    assert "tiny-i0-generate-r1" in jobs
    failed = {c["type"]: c for c in jobs["tiny-i0-generate"]["status"]["conditions"]}
    assert failed["Failed"]["status"] == "True"  # the real Job controller's verdict
    assert status["retries"] == 1
    retry = [e["message"] for e in await kenv.events() if e["reason"] == "StepRetrying"]
    assert retry and "illegal memory access" in retry[0]


async def test_suspend_and_resume_keep_complete_steps(kenv) -> None:
    hold = Outcome("hold")
    kenv.node.decide = lambda pod: (
        hold if pod["metadata"]["labels"]["job-name"] == "tiny-i0-train" else Outcome()
    )
    await kenv.start_operator()
    await kenv.create(kenv.manifest())
    await wait_for(lambda: "tiny-i0-train" in "".join(kenv.node.started), 200, "train to start")
    await kenv.api.ok("PATCH", kenv.path("tiny"), {"spec": {"runPolicy": {"suspend": True}}})
    status = await kenv.wait_phase("tiny", ("Suspended",), 60)
    assert status["completed"] == ["prepare", "0/generate"]

    async def train_gone() -> bool:
        return not [p for p in await kenv.pods("tiny") if "train" in p["metadata"]["name"]]

    for _ in range(300):  # the Job deleted in the background; its pods by the GC
        if await train_gone():
            break
        await asyncio.sleep(0.1)
    assert await train_gone()
    hold.release.set()
    kenv.node.decide = lambda pod: Outcome()
    await kenv.api.ok("PATCH", kenv.path("tiny"), {"spec": {"runPolicy": {"suspend": False}}})
    status = await kenv.wait_phase("tiny", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status.get("message")
    reasons = [e["reason"] for e in await kenv.events()]
    assert "Suspended" in reasons and "Resumed" in reasons


async def test_an_operator_killed_mid_step_is_replaced_without_duplicates_or_loss(kenv) -> None:
    hold = Outcome("hold")
    kenv.node.decide = lambda pod: (
        hold if pod["metadata"]["labels"]["job-name"] == "tiny-i0-train" else Outcome()
    )
    first = await kenv.start_operator()
    await kenv.create(kenv.manifest())
    await wait_for(lambda: "tiny-i0-train" in "".join(kenv.node.started), 200, "train to start")
    first.kill(signal.SIGKILL)
    hold.release.set()  # the step finishes while no operator runs
    await wait_for(
        lambda: any(n.startswith("tiny-i0-train") for n, _ in kenv.node.finished), 120, "train"
    )
    await kenv.start_operator()
    status = await kenv.wait_phase("tiny", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["completed"] == ["prepare", "0/generate", "0/train", "0/evaluate"]
    names = [j["metadata"]["name"] for j in await kenv.jobs("tiny")]
    assert sorted(names) == [
        "tiny-i0-evaluate",
        "tiny-i0-generate",
        "tiny-i0-prepare",
        "tiny-i0-train",
    ]
    ran = [n.rsplit("-", 1)[0] for n, _ in kenv.node.finished]
    assert len(ran) == len(set(ran)) == 4, ran  # each step's pod ran once
    assert status["history"][0]["steps"]["train"]["attempts"] == 1


async def test_deleting_an_evarun_removes_its_jobs_and_pods(kenv) -> None:
    hold = Outcome("hold")
    kenv.node.decide = lambda pod: hold
    await kenv.start_operator()
    await kenv.create(kenv.manifest())
    await wait_for(lambda: kenv.node.started, 60, "the first pod")
    assert await kenv.jobs("tiny") and await kenv.pods("tiny")
    await kenv.api.ok("DELETE", kenv.path("tiny"))
    for _ in range(300):
        if not (await kenv.run() or await kenv.jobs("tiny") or await kenv.pods("tiny")):
            break
        await asyncio.sleep(0.1)
    assert await kenv.run() is None, "the finalizer was removed"
    assert not await kenv.jobs("tiny") and not await kenv.pods("tiny")


async def test_a_namespaced_install_runs_its_namespace_only(team_env, kenv) -> None:
    """scope: namespace (a Role, EVA_WATCH_NAMESPACES): its operator, under that Role, runs the
    EvaRuns of its namespace and never touches another namespace's."""
    env = team_env
    assert env.installed.env["EVA_WATCH_NAMESPACES"] == "eva-team"
    await env.start_operator()
    await env.create(env.manifest("team-run"))
    await kenv.create(kenv.manifest("elsewhere"))
    status = await env.wait_phase("team-run", ("Succeeded", "Failed"), 300)
    assert status["phase"] == "Succeeded", status.get("message")
    assert await kenv.status("elsewhere") == {}, "another namespace's run was left alone"
    touched = {e.get("objectRef", {}).get("namespace") for e in env.operator_requests()}
    assert touched <= {"eva-team", None}, touched
