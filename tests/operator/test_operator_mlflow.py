"""The operator ends each EvaRun's MLflow run, against a real `mlflow server`: FINISHED when
the run succeeds, KILLED when it is deleted on the way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlflow_tools import Server, launch_mlflow
from operator_harness import JOBS, Outcome, live, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with launch_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        server.wait_ready()
        yield server


def _tracking(server: Server) -> dict:
    return {"mlflow": {"trackingUri": server.url, "registerModel": False}}


@pytest.mark.asyncio
async def test_a_succeeded_evarun_ends_its_mlflow_run_as_finished(env, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    await env.start_operator()
    await env.api.apply_run(env.manifest("done", creator=False, tracking=_tracking(mlflow_server)))
    status = await env.wait_phase("done", ("Succeeded", "Failed"), 180)
    assert status["phase"] == "Succeeded", status.get("message")
    run = MlflowClient(mlflow_server.url).get_run(status["mlflowRunId"])
    await wait_for(
        lambda: MlflowClient(mlflow_server.url).get_run(run.info.run_id).info.status == "FINISHED",
        10,
        "the MLflow run to be FINISHED",
    )
    assert run.data.params["creator.enabled"] == "false"  # logged by the step pods


@pytest.mark.asyncio
async def test_deleting_a_running_evarun_ends_its_mlflow_run_as_killed(
    env, rules, mlflow_server
) -> None:
    from mlflow.tracking import MlflowClient

    env.controller.decide = rules({("evaluate", 0): Outcome("hold")})
    await env.start_operator()
    await env.api.apply_run(env.manifest(creator=False, tracking=_tracking(mlflow_server)))
    await wait_for(lambda: "tiny-i0-evaluate" in env.controller.started, 180, "evaluate")
    status = env.status()
    run_id = status["mlflowRunId"]  # the steps so far were logged by the pods themselves
    client = MlflowClient(mlflow_server.url)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert status["history"][0]["steps"]["train"]["job"] == "tiny-i0-train"

    await env.api.delete_run("default", "tiny")
    await wait_for(lambda: env.status() == {}, 30, "the EvaRun to be deleted")
    assert not live(env.cluster, JOBS)
    assert client.get_run(run_id).info.status == "KILLED"
