"""Fixtures for the operator end-to-end tests: KMock's API, the operator, a Job controller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from operator_harness import (
    Api,
    Cluster,
    JobController,
    Operator,
    Outcome,
    run_object,
    running_cluster,
    wait_for,
    write_kubeconfig,
)
from tiny_run import tiny_manifest

CLAIM = "eva-artifacts"


@dataclass
class Env:
    cluster: Cluster
    api: Api
    controller: JobController
    kubeconfig: Path
    tmp: Path
    model: Path
    operator_env: dict[str, str] = field(default_factory=dict)
    operators: list[Operator] = field(default_factory=list)

    async def start_operator(self, **env: str) -> Operator:
        op = Operator(self.kubeconfig, **{**self.operator_env, **env})
        await op.start()
        self.operators.append(op)
        return op

    def manifest(
        self, name: str = "tiny", *, creator: bool = True, prompts: int = 15, **spec: Any
    ) -> dict:
        folder = self.tmp / "manifests" / name
        folder.mkdir(parents=True, exist_ok=True)
        spec.setdefault("storage", {"claimName": CLAIM})
        path = tiny_manifest(
            folder, self.model, creator=creator, name=name, prompts=prompts, spec=spec
        )
        return yaml.safe_load(path.read_text())

    def status(self, name: str = "tiny") -> dict[str, Any]:
        return (run_object(self.cluster, name) or {}).get("status") or {}

    async def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float) -> dict:
        await wait_for(
            lambda: self.status(name).get("phase") in phases,
            timeout,
            f"EvaRun {name} to reach {'/'.join(phases)} (now {self.status(name).get('phase')})",
        )
        return self.status(name)


@pytest_asyncio.fixture
async def env(tmp_path: Path, tiny_model: Path) -> AsyncIterator[Env]:
    async with running_cluster() as cluster:
        api = Api(str(cluster.url))
        artifacts = tmp_path / "pvc"
        artifacts.mkdir()
        controller = JobController(cluster, api, artifacts, tmp_path / "pods")
        controller.start()
        e = Env(
            cluster=cluster,
            api=api,
            controller=controller,
            kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", str(cluster.url)),
            tmp=tmp_path,
            model=tiny_model,
            operator_env={"EVA_OPERATOR_RESYNC_SECONDS": "30"},
        )
        try:
            yield e
        finally:
            await controller.stop()
            for op in e.operators:
                await op.stop()
            await api.close()


def outcomes(rules: dict[tuple[str, int], Outcome]) -> Callable[[dict], Outcome]:
    """Decide per Job by (step, attempt); unlisted Jobs run their real command."""

    def decide(job: dict) -> Outcome:
        labels = job["metadata"]["labels"]
        key = (labels["eva.dev/step"], int(labels["eva.dev/attempt"]))
        return rules.pop(key, None) or Outcome()

    return decide


@pytest.fixture
def rules() -> Callable[[dict[tuple[str, int], Outcome]], Callable[[dict], Outcome]]:
    return outcomes
