"""`eva sweep --emit` manifests run through the operator as ordinary EvaRuns, and the
operator exports their sweep and cell (what the run dashboard filters by)."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from click.testing import CliRunner

from eva_runtime.api import LABEL_SWEEP, LABEL_SWEEP_CELL
from eva_runtime.cli import main
from operator_harness import run_object

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]


async def test_emitted_sweep_manifests_run_through_the_operator(env) -> None:
    base = env.tmp / "base.yaml"
    base.write_text(yaml.safe_dump(env.manifest("grid", creator=False, prompts=8)))
    out = env.tmp / "emitted"
    result = CliRunner().invoke(
        main,
        ["sweep", str(base), "--seeds", "1,2", "--set", "solver.beta=0.1", "--emit", str(out)],
    )
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    assert len(docs) == 2

    op = await env.start_operator()
    await asyncio.gather(*(env.api.apply_run(d) for d in docs))
    for d in docs:
        name = d["metadata"]["name"]
        status = await env.wait_phase(name, ("Succeeded", "Failed"), 500)
        assert status["phase"] == "Succeeded", (name, status.get("message"))
        stored = run_object(env.cluster, name)
        assert stored is not None
        labels = stored["metadata"]["labels"]
        assert labels[LABEL_SWEEP] == "grid" and labels["eva.dev/seed"] == str(d["spec"]["seed"])
        info = op.metrics.registry.get_sample_value(
            "eva_operator_run_info",
            {
                "namespace": "default",
                "run": name,
                "sweep": "grid",
                "cell": labels[LABEL_SWEEP_CELL],
            },
        )
        assert info == 1.0
        # Each run trained with its own seed in its own run directory.
        run_dir = env.controller.artifacts / "default" / name
        assert (run_dir / "iter-0" / "evaluate" / "_SUCCESS.json").exists()
        assert (
            yaml.safe_load((run_dir / "evarun.yaml").read_text())["spec"]["seed"]
            == d["spec"]["seed"]
        )
