"""What goes wrong on a real cluster, and what a user sees: refused pods, an old server,
a stale status write, many runs at once, and the RBAC those need."""

from __future__ import annotations

import asyncio
from collections import Counter

import kopf
import pytest

from conftest import CLAIM, NAMESPACE, RELEASE
from eva_operator.jobs import StepDefaults
from eva_operator.kube import Kube, run_path
from eva_operator.metrics import OperatorMetrics
from eva_operator.reconciler import Reconciler

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]


@pytest.mark.no_step_account
async def test_pods_the_api_refuses_block_the_step_visibly_then_fail_it(kenv) -> None:
    """The namespace lacks the chart's eva-step ServiceAccount: the Job controller's pods are
    refused (FailedCreate). The run says why at once, and fails at the pending deadline."""
    await kenv.start_operator()
    await kenv.create(kenv.manifest(runPolicy={"pendingDeadlineSeconds": 20}))

    async def blocked() -> dict | None:
        conds = {c["type"]: c for c in (await kenv.status()).get("conditions") or []}
        cond = conds.get("StepBlocked")
        return cond if cond and cond["status"] == "True" else None

    cond = None
    for _ in range(150):
        if cond := await blocked():
            break
        await asyncio.sleep(0.2)
    assert cond, await kenv.status()
    assert cond["reason"] == "PodsNotCreated"
    assert 'serviceaccount "eva-step" not found' in cond["message"]
    assert (await kenv.status())["phase"] == "Running"
    warnings = [e for e in await kenv.events() if e["reason"] == "PodsNotCreated"]
    assert warnings and warnings[0]["type"] == "Warning"
    assert "eva-step" in warnings[0]["message"]
    status = await kenv.wait_phase("tiny", ("Failed",), 60)
    assert status["reason"] == "PodsNotCreated"
    assert "pendingDeadlineSeconds" in status["message"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["StepBlocked"]["status"] == "False"
    assert not await kenv.jobs("tiny"), "the stuck Job is deleted"


async def test_an_old_server_refuses_what_it_cannot_run_with_a_reason(kenv) -> None:
    if kenv.cp.version >= (1, 22):
        pytest.skip("this server has Indexed Jobs and Job suspend")
    await kenv.start_operator()
    await kenv.create(kenv.manifest("sharded", generation={"shards": 2}))
    await kenv.create(kenv.manifest("queued", resources={"queueName": "gpus"}))
    sharded = await kenv.wait_phase("sharded", ("Failed",), 60)
    assert sharded["reason"] == "UnsupportedByCluster"
    assert "spec.generation.shards: 2 needs Indexed Jobs" in sharded["message"]
    assert "Kubernetes 1.20" in sharded["message"]
    queued = await kenv.wait_phase("queued", ("Failed",), 60)
    assert "spec.resources.queueName" in queued["message"]
    assert not await kenv.jobs(), "no Job that would run wrongly"
    assert "UnsupportedByCluster" in {e["reason"] for e in await kenv.events("sharded")}


class RacingKube(Kube):
    """The operator's client, with someone else writing the run between our read and write."""

    def __init__(self, admin, path: str):
        super().__init__()
        self.admin = admin
        self.path = path
        self.races = 1

    async def get(self, path: str) -> dict:
        data = await super().get(path)
        if path == self.path and self.races:
            self.races -= 1
            await self.admin.ok("PATCH", path, {"metadata": {"annotations": {"team": "a"}}})
        return data


async def operator_reconciler(kenv, kube: Kube) -> tuple[Reconciler, OperatorMetrics]:
    """A Reconciler of our own on ``kube``, connected as the chart's operator account."""
    token = await kenv.api.token_for(NAMESPACE, RELEASE)
    kube.set_connection(
        kopf.ConnectionInfo(server=kenv.cp.url, ca_path=str(kenv.cp.ca_file), token=token)
    )
    metrics = OperatorMetrics()
    return Reconciler(kube=kube, defaults=StepDefaults(claim_name=CLAIM), metrics=metrics), metrics


async def test_a_stale_status_write_is_refused_with_409_and_planned_again(kenv) -> None:
    await kenv.create(kenv.manifest())
    kube = RacingKube(kenv.api, run_path(kenv.namespace, "tiny"))
    rec, metrics = await operator_reconciler(kenv, kube)
    try:
        rec.poke(kenv.namespace, "tiny")
        status = await kenv.wait_phase("tiny", ("Running",), 30)
    finally:
        await rec.close()
        await kube.close()
    assert metrics.registry.get_sample_value("eva_operator_status_conflicts_total") == 1
    assert status["step"] == "prepare" and status["job"] == "tiny-i0-prepare"
    run = await kenv.run()
    assert run["metadata"]["annotations"]["team"] == "a"  # the other write was kept
    conflicts = [
        e
        for e in kenv.cp.audit(f"system:serviceaccount:{NAMESPACE}:{RELEASE}")
        if e.get("objectRef", {}).get("namespace") == kenv.namespace
        and e["objectRef"].get("subresource") == "status"
    ]
    assert [e["responseStatus"]["code"] for e in conflicts][:2] == [409, 200]
    assert [j["metadata"]["name"] for j in await kenv.jobs("tiny")] == ["tiny-i0-prepare"]


async def test_a_run_being_deleted_is_not_planned_and_its_series_go(kenv) -> None:
    """Between its deletion and its finalizer's release a run still exists: a poke then (a Job
    the deletion removes) must neither plan it nor bring back the series of a deleted run."""
    doc = kenv.manifest()
    doc["metadata"]["finalizers"] = ["test.eva.dev/hold"]
    await kenv.create(doc)
    kube = Kube()
    rec, metrics = await operator_reconciler(kenv, kube)
    try:
        await rec.reconcile(kenv.namespace, "tiny")
        phase = (await kenv.status())["phase"]
        series = {"namespace": kenv.namespace, "run": "tiny", "phase": phase}
        assert metrics.registry.get_sample_value("eva_operator_run_phase", series) == 1
        await kenv.api.ok("DELETE", kenv.path("tiny"))
        before = await kenv.run()
        assert before and before["metadata"].get("deletionTimestamp")
        assert await rec.reconcile(kenv.namespace, "tiny") is None
        assert metrics.registry.get_sample_value("eva_operator_run_phase", series) is None
        after = await kenv.run()
        assert after and after["status"] == before["status"], "nothing written to a going run"
    finally:
        await rec.close()
        await kube.close()
        await kenv.api.ok("PATCH", kenv.path("tiny"), {"metadata": {"finalizers": None}})


async def test_twenty_evaruns_at_once(kenv) -> None:
    await kenv.start_operator()
    names = [f"run-{i:02d}" for i in range(20)]
    for name in names:
        code, data = await kenv.create(kenv.manifest(name, prompts=6))
        assert code == 201, data
    for name in names:
        status = await kenv.wait_phase(name, ("Succeeded", "Failed"), 540)
        assert status["phase"] == "Succeeded", (name, status.get("message"))
    jobs = [j["metadata"]["name"] for j in await kenv.jobs()]
    assert len(jobs) == len(set(jobs)) == 4 * len(names)
    created = Counter(
        e["objectRef"]["name"]
        for e in kenv.operator_requests()
        if e["verb"] == "create"
        and e.get("objectRef", {}).get("resource") == "jobs"
        and e["responseStatus"]["code"] == 201
    )
    assert set(created.values()) == {1}, "every Job created exactly once"


async def test_owner_references_need_the_finalizers_rule_the_chart_grants(kenv) -> None:
    """With OwnerReferencesPermissionEnforcement (as OpenShift runs it), a Job owned with
    blockOwnerDeletion is refused to an identity that may not update the run's finalizers."""
    code, run = await kenv.create(kenv.manifest())
    assert code == 201, run
    (role,) = [
        o
        for o in kenv.installed.objects
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == RELEASE
    ]
    lacking = [r for r in role["rules"] if "evaruns/finalizers" not in r["resources"]]
    assert len(lacking) == len(role["rules"]) - 1
    ns = kenv.namespace
    await kenv.api.ok(
        "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "no-finalizers"}}
    )
    await kenv.api.ok(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {"metadata": {"name": "no-finalizers"}, "rules": lacking},
    )
    await kenv.api.ok(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "metadata": {"name": "no-finalizers"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "no-finalizers",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "no-finalizers", "namespace": ns}],
        },
    )
    from eva_operator.jobs import build_job
    from eva_runtime.spec import parse_run

    er = parse_run({k: run[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    job = build_job(er, run["metadata"], 0, "prepare", defaults=StepDefaults())
    from kube_cluster import KubeApi

    for account, expected in (("no-finalizers", 403), (RELEASE, 201)):
        token = await kenv.api.token_for(ns if account == "no-finalizers" else NAMESPACE, account)
        client = KubeApi(kenv.cp, token)
        try:
            code, data = await client.call("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", job)
        finally:
            await client.close()
        assert code == expected, (account, data)
        if code == 403:
            assert "blockOwnerDeletion" in data["message"]
