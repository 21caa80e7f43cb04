"""The admission webhook as the API server calls it: over TLS, registered by the operator in
the chart's default (self-managed) mode, under the chart's RBAC."""

from __future__ import annotations

import asyncio
import json
import signal

import psutil
import pytest
import yaml

from conftest import CLAIM, RELEASE
from kube_cluster import ROOT
from operator_harness import Outcome, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

CONFIGURATION = f"{RELEASE}.eva.dev"
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


async def test_the_default_webhook_mode_registers_one_validating_webhook_and_survives(
    kenv,
) -> None:
    op = await kenv.start_operator()
    assert kenv.installed.env["EVA_WEBHOOK_MODE"] == "self-managed"  # the chart's default
    config = await kenv.api.ok("GET", f"{VWC}/{CONFIGURATION}")
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"].endswith("/admit") and hook["clientConfig"]["caBundle"]
    assert hook["rules"][0]["resources"] == ["evaruns"]
    # No mutating configuration: kopf's managed mode would need one (and RBAC for it).
    assert not [m for m in await kenv.api.items(MWC) if "eva" in m["metadata"]["name"]]
    await asyncio.sleep(5)  # kopf's managers retried 403s for a while, then exited
    assert op.alive() and op.healthy(), op.text()[-3000:]
    # Every listener on the address it was given (EVA_OPERATOR_BIND_ADDRESS), none on 0.0.0.0.
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(op.proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert {port for _, port in listening} >= {op.health_port, op.metrics_port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening


async def test_the_api_server_refuses_what_the_operator_refuses(kenv) -> None:
    await kenv.start_operator()
    doc = kenv.manifest("noclaim")
    del doc["spec"]["storage"]  # the chart's default install has no artifact claim
    out = kenv.cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr and "spec.storage.claimName: required" in out.stderr

    await kenv.create(kenv.manifest("seeded"))
    await kenv.wait_phase("seeded", ("Running", "Succeeded"), 60)
    code, data = await kenv.api.call("PATCH", kenv.path("seeded"), {"spec": {"seed": 8}})
    assert code == 422, data
    assert "spec.seed: cannot change while the run exists" in data["message"]


async def test_metadata_updates_and_deletion_pass_rules_a_run_predates(kenv) -> None:
    # Admitted before the webhook existed: no claim (invalid under today's rules).
    await kenv.api.call("DELETE", f"{VWC}/{CONFIGURATION}")
    doc = kenv.manifest("old")
    del doc["spec"]["storage"]
    code, data = await kenv.create(doc)
    assert code == 201, data
    op = await kenv.start_operator()
    # The operator fails it with a reason instead of retrying forever.
    status = await kenv.wait_phase("old", ("Failed",), 60)
    assert status["reason"] == "InvalidSpec"
    assert "spec.storage.claimName: required" in status["message"]
    assert "InvalidSpec" in {e["reason"] for e in await kenv.events("old")}
    # Labels (metadata only) pass the webhook; so does kopf's finalizer removal on delete.
    await kenv.api.ok("PATCH", kenv.path("old"), {"metadata": {"labels": {"team": "a"}}})
    await kenv.api.ok("DELETE", kenv.path("old"))
    for _ in range(100):
        if await kenv.run("old") is None:
            break
        await asyncio.sleep(0.1)
    assert await kenv.run("old") is None, "stuck Terminating"
    retried = [line for line in op.text().splitlines() if f"{kenv.namespace}/old failed" in line]
    assert not retried, retried[:3]


async def test_evarun_writes_pass_while_the_operator_is_down(kenv) -> None:
    op = await kenv.start_operator()
    await kenv.create(kenv.manifest("first"))
    op.kill(signal.SIGKILL)  # the webhook configuration stays, pointing at nothing
    config = await kenv.api.ok("GET", f"{VWC}/{CONFIGURATION}")
    assert config["webhooks"][0]["clientConfig"]["url"]
    code, data = await kenv.create(kenv.manifest("second"))
    assert code == 201, data  # failurePolicy Ignore
    code, data = await kenv.api.call(
        "PATCH", kenv.path("first"), {"metadata": {"finalizers": None}}
    )
    assert code == 200, data  # an administrator can always remove a finalizer by hand


async def test_fail_policy_refuses_writes_while_the_operator_is_down(kenv) -> None:
    op = await kenv.start_operator(EVA_WEBHOOK_FAILURE_POLICY="Fail")
    config = await kenv.api.ok("GET", f"{VWC}/{CONFIGURATION}")
    assert config["webhooks"][0]["failurePolicy"] == "Fail"
    op.kill(signal.SIGKILL)
    code, data = await kenv.create(kenv.manifest("refused"))
    assert code >= 400 and "admit" in json.dumps(data), data
    await kenv.start_operator()  # back to the default: Ignore
    config = await kenv.api.ok("GET", f"{VWC}/{CONFIGURATION}")
    assert config["webhooks"][0]["failurePolicy"] == "Ignore"


async def test_the_shipped_examples_on_the_default_install(kenv) -> None:
    """Each example as shipped, through the API server (server-side dry run: the schema and
    the webhook): the CPU ones name no claim and are refused with what to do; the cluster
    ones are admitted. Then tiny-cpu, given a claim, starts for real."""
    await kenv.start_operator()
    examples = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for path in examples:
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["namespace"] = kenv.namespace
        out = kenv.cp.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(doc), check=False
        )
        if (doc["spec"].get("storage") or {}).get("claimName"):
            assert out.returncode == 0, (path.name, out.stderr)
        else:
            assert out.returncode != 0, path.name
            assert "spec.storage.claimName: required in this cluster" in out.stderr, out.stderr
            assert "artifacts.claimName" in out.stderr
    hold = Outcome("hold")
    kenv.node.decide = lambda pod: hold
    doc = yaml.safe_load((ROOT / "manifests/examples/tiny-cpu.yaml").read_text())
    doc["metadata"]["namespace"] = kenv.namespace
    doc["spec"]["storage"] = {"claimName": CLAIM}
    kenv.cp.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    status = await kenv.wait_phase("tiny-cpu", ("Running",), 60)
    assert status["job"] == "tiny-cpu-i0-prepare"
    await wait_for(lambda: kenv.node.started, 60, "the prepare pod to run")
    hold.release.set()
