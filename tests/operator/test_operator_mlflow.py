"""Deleting an EvaRun ends its MLflow run, against a real `mlflow server`."""

from __future__ import annotations

import asyncio

import pytest

from mlflow_tools import launch_mlflow
from operator_harness import JOBS, Outcome, live, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]


async def test_deleting_a_running_evarun_ends_its_mlflow_run_as_killed(env, rules) -> None:
    from mlflow.tracking import MlflowClient

    with launch_mlflow(env.tmp / "mlflow") as server:
        await asyncio.to_thread(server.wait_ready)
        env.controller.decide = rules({("evaluate", 0): Outcome("hold")})
        await env.start_operator()
        tracking = {"mlflow": {"trackingUri": server.url, "registerModel": False}}
        await env.api.apply_run(env.manifest(creator=False, tracking=tracking))
        await wait_for(lambda: "tiny-i0-evaluate" in env.controller.started, 180, "evaluate")
        status = env.status()
        run_id = status["mlflowRunId"]  # the steps so far were logged by the pods themselves
        client = MlflowClient(server.url)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert status["history"][0]["steps"]["train"]["job"] == "tiny-i0-train"

        await env.api.delete_run("default", "tiny")
        await wait_for(lambda: env.status() == {}, 30, "the EvaRun to be deleted")
        assert not live(env.cluster, JOBS)
        assert client.get_run(run_id).info.status == "KILLED"
