"""EvaRun manifests for whole runs on the tiny model: one builder, tuned per test by overrides;
and the one way tests start the `eva` command as a child process."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TOPICS = ["rivers", "bread", "stars", "chess", "clouds", "trains", "bees", "maps", "glass", "salt"]


def write_prompts(path: Path, n: int, *, suffix: str = "") -> Path:
    with path.open("w") as fh:
        for i in range(n):
            text = f"Tell me {i} facts about {TOPICS[i % len(TOPICS)]}.{suffix}"
            fh.write(json.dumps({"prompt": text}) + "\n")
    return path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_manifest(
    tmp: Path,
    model: Path,
    *,
    creator: bool = True,
    name: str = "tiny",
    reward: str = "eva_runtime.rewards:length_target",
    prompts: int = 15,
    prompt_suffix: str = "",
    spec: dict[str, Any] | None = None,
) -> Path:
    """A run of a few seconds: 15 prompts (3 held out), 3 samples of 12 tokens, one iteration.

    ``spec`` is merged into the spec section, so a test changes only what it is about.
    """
    source = write_prompts(tmp / "prompts.jsonl", prompts, suffix=prompt_suffix)
    base = {
        "iterations": 1,
        "seed": 7,
        "policy": {"model": str(model)},
        "rewardModel": {"type": "python", "function": reward},
        "prompts": {"source": str(source), "heldOut": 3},
        "generation": {
            "backend": "transformers",
            "samplesPerPrompt": 3,
            "maxNewTokens": 12,
            "batchSize": 8,
        },
        "creator": {
            "enabled": creator,
            "sampleFraction": 0.5,
            "evolve": {"variantsPerPrompt": 3, "evolver": {"maxNewTokens": 24}},
        },
        "solver": {
            "algorithm": "dpo",
            "beta": 0.1,
            "learningRate": 1e-3,
            "epochs": 1,
            "effectiveBatchSize": 4,
            "perDeviceBatchSize": 4,
            "maxLength": 96,
            "precision": "fp32",
        },
        "evaluation": {"samplesPerPrompt": 2},
    }
    doc = {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": name},
        "spec": _merge(base, spec or {}),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cluster_spec(overrides: dict[str, Any] | None = None, *, shards: int = 2) -> dict[str, Any]:
    """A valid spec for the operator's pure tests: nothing in it is loaded or run.

    ``overrides`` replaces top-level sections, merging one level deep.
    """
    base: dict[str, Any] = {
        "policy": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "rewardModel": {"type": "python", "function": "eva_runtime.rewards:length_target"},
        "prompts": {"source": "/data/prompts.jsonl"},
        "storage": {"claimName": "eva-artifacts"},
        "iterations": 2,
        "generation": {"shards": shards},
    }
    for k, v in (overrides or {}).items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def eva_process(*args: str, cwd: Path, **env_extra: str) -> subprocess.Popen:
    """``eva ARGS`` in a child process of its own session (a test can kill its whole group),
    offline, with tests/e2e on PYTHONPATH (the test reward functions live there)."""
    here = str(Path(__file__).parent / "e2e")
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {
        k: v for k, v in os.environ.items() if k not in ("EVA_SPEC_YAML", "JOB_COMPLETION_INDEX")
    }
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **env_extra})
    return subprocess.Popen(
        [sys.executable, "-m", "eva_runtime.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
