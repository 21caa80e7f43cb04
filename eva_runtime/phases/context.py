"""What every step needs from the spec: seeds, prompt sets, rollouts, backends.

The backends are built here from the spec so the steps themselves stay about the
algorithm. Heavy libraries are imported inside the backends, never at module import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from eva_runtime.artifacts import RunDir, StepDir
from eva_runtime.errors import StepError
from eva_runtime.phases.warm import WarmModels
from eva_runtime.spec import EvaRun, EvaRunSpec, OpenAIEndpoint
from eva_runtime.status import merge_shard_counts
from eva_runtime.timing import STEP_PARTS, split_seconds, timed

ROLLOUT_COLUMNS = (
    "order",
    "prompt_id",
    "prompt",
    "sample",
    "response",
    "finish_reason",
    "num_tokens",
    "reward",
)
# Pairwise rewards add this column: per response, P(it beats sample j of its prompt).
PREFERENCES_COLUMN = "preferences"


@dataclass
class Context:
    run: EvaRun
    run_dir: RunDir
    # eva run keeps models loaded between steps (see phases/warm.py); None: every step loads.
    warm: WarmModels | None = None

    @property
    def spec(self) -> EvaRunSpec:
        return self.run.spec

    # ------------------------------------------------------------------ prompts

    def prompt_set(self, iteration: int) -> pd.DataFrame:
        """X_t: the prompts that iteration ``iteration`` generates on."""
        prep = self.run_dir.prepare()
        self.run_dir.require(prep, "the prepare step")
        if iteration == 0 or not self.spec.creator.enabled:
            return pd.read_parquet(prep.path / "train.parquet")
        create = self.run_dir.step(iteration - 1, "create")
        self.run_dir.require(create, f"the create step of iteration {iteration - 1}")
        return pd.read_parquet(create.path / "mixed.parquet")

    def evolved_set(self, iteration: int) -> pd.DataFrame:
        create = self.run_dir.step(iteration, "create")
        self.run_dir.require(create, f"the create step of iteration {iteration}")
        return pd.read_parquet(create.path / "evolved.parquet")

    def heldout(self) -> pd.DataFrame:
        prep = self.run_dir.prepare()
        self.run_dir.require(prep, "the prepare step")
        return pd.read_parquet(prep.path / "heldout.parquet")

    # ------------------------------------------------------------------ rollouts

    def rollouts(self, iteration: int, step: str) -> pd.DataFrame:
        """All shards of a generation step, in prompt order."""
        sd = self.run_dir.step(iteration, step)
        summary = self.run_dir.require(sd, f"the {step} step of iteration {iteration}")
        num_shards = int(summary["num_shards"])
        frames = [
            pd.read_parquet(
                self.run_dir.shard(iteration, step, i, num_shards).path / "rollouts.parquet"
            )
            for i in range(num_shards)
        ]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame({c: [] for c in ROLLOUT_COLUMNS})
        out = pd.concat(frames, ignore_index=True)
        return out.sort_values(["order", "sample"], kind="stable").reset_index(drop=True)

    # ------------------------------------------------------------------ models

    def model_path(self, ref: str, field: str, *, trust_remote_code: bool = False) -> str:
        """Where to load a model the spec names (``field``): a hub model from the cache at the
        commit the prepare step recorded (eva_runtime.hub), anything else as resolve_model
        says (a folder, a converted GGUF file)."""
        from eva_runtime.models import is_hub_model, resolve_model

        if is_hub_model(ref):
            from eva_runtime.hub import RECORD, local_model

            return local_model(ref, field, self.run_dir.prepare().path / RECORD)
        return resolve_model(ref, trust_remote_code=trust_remote_code)

    def policy_path(self, iteration: int) -> str:
        base = self.run_dir.policy(iteration, self.spec.policy.model)
        if iteration == 0:
            p = self.spec.policy
            return self.model_path(base, "policy.model", trust_remote_code=p.trust_remote_code)
        return base

    def _endpoint_key(self, ep: OpenAIEndpoint) -> str | None:
        if ep.api_key_env is None:
            return None
        key = os.environ.get(ep.api_key_env)
        if key is None:
            raise StepError(
                f"environment variable {ep.api_key_env} is not set "
                "(named by an endpoint's apiKeyEnv in the spec)"
            )
        return key

    def local_backend(self) -> str:
        backend = self.spec.generation.backend
        if backend in ("transformers", "vllm"):
            return str(backend)
        if backend == "auto":
            import importlib.util

            import torch

            if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
                return "vllm"
        return "transformers"

    def policy_generator(self, model_path: str, iteration: int) -> Any:
        def load() -> Any:
            with timed("load"):
                return self._policy_generator(model_path, iteration)

        if self.warm is None or self.spec.generation.backend == "openai":
            return load()  # a client of a server loads nothing worth keeping
        return self.warm.get(("policy", model_path), load)

    def _policy_generator(self, model_path: str, iteration: int) -> Any:
        from eva_runtime.backends.generation import make_generator

        gen = self.spec.generation
        if gen.backend == "openai":
            assert gen.endpoint is not None
            # The server must serve the current policy: at iteration 0 the endpoint's model,
            # later the path of the previous policy (a server that sees the run's storage).
            name = gen.endpoint.model if iteration == 0 else model_path
            return make_generator(
                "openai",
                name,
                base_url=gen.endpoint.base_url,
                api_key=self._endpoint_key(gen.endpoint),
                batch_size=gen.batch_size,
            )
        return make_generator(
            self.local_backend(),
            model_path,
            batch_size=gen.batch_size,
            trust_remote_code=self.spec.policy.trust_remote_code,
            dtype=self.spec.policy.dtype,
        )

    def evolver_generator(self, policy_path: str, iteration: int) -> Any:
        if self.spec.creator.evolve.evolver.type == "policy":  # self-play: the policy itself
            return self.policy_generator(policy_path, iteration)
        with timed("load"):
            return self._evolver_generator()

    def _evolver_generator(self) -> Any:
        from eva_runtime.backends.generation import make_generator

        ev = self.spec.creator.evolve.evolver
        if ev.type == "openai":
            assert ev.endpoint is not None
            return make_generator(
                "openai",
                ev.endpoint.model,
                base_url=ev.endpoint.base_url,
                api_key=self._endpoint_key(ev.endpoint),
                batch_size=self.spec.generation.batch_size,
            )
        assert ev.model is not None
        return make_generator(
            self.local_backend(),
            self.model_path(ev.model, "creator.evolve.evolver.model"),
            batch_size=self.spec.generation.batch_size,
        )

    def reward_model(self) -> Any:
        def load() -> Any:
            with timed("load"):
                return self._reward_model()

        return load() if self.warm is None else self.warm.get(("reward",), load)

    def _reward_model(self) -> Any:
        from eva_runtime.backends.generation import make_generator
        from eva_runtime.backends.reward_model import make_reward_model

        rm = self.spec.reward_model
        judge = None
        model = rm.model
        if rm.type == "judge" or (rm.type == "pairwise" and rm.preference == "judge"):
            if rm.judge_endpoint is not None:
                judge = make_generator(
                    "openai",
                    rm.judge_endpoint.model,
                    base_url=rm.judge_endpoint.base_url,
                    api_key=self._endpoint_key(rm.judge_endpoint),
                )
            else:
                assert model is not None
                judge = make_generator(
                    self.local_backend(), self.model_path(model, "rewardModel.model")
                )
        elif model is not None:
            model = self.model_path(
                model, "rewardModel.model", trust_remote_code=rm.trust_remote_code
            )
        return make_reward_model(
            rm.type,
            model=model,
            function=rm.function,
            trust_remote_code=rm.trust_remote_code,
            batch_size=rm.batch_size,
            max_length=rm.max_length,
            judge_generator=judge,
            preference=rm.preference,
            both_orders=rm.both_orders,
        )


def reward_matrix(rollouts: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(prompt ids in order, rewards (P, n), valid-for-pairing mask (P, n)) from rollouts.

    Prompts must all have the same number of samples: that is what generation writes.
    """
    if rollouts.empty:
        return [], np.zeros((0, 0)), np.zeros((0, 0), dtype=bool)
    ids = list(dict.fromkeys(rollouts["prompt_id"]))
    n = int(rollouts["sample"].max()) + 1
    if len(rollouts) != len(ids) * n:
        raise StepError(
            f"rollouts have {len(rollouts)} rows for {len(ids)} prompts x {n} samples; "
            "a shard is inconsistent: delete the step folder and run it again"
        )
    rewards = rollouts["reward"].to_numpy(dtype=np.float64).reshape(len(ids), n)
    stop = (rollouts["finish_reason"] != "length").to_numpy().reshape(len(ids), n)
    return ids, rewards, stop


def finalize_sharded(run_dir: RunDir, iteration: int, step: str, num_shards: int) -> dict | None:
    """Write the step's marker once every shard is complete (any shard may do it)."""
    if not run_dir.shards_complete(iteration, step, num_shards):
        return None
    sd = run_dir.step(iteration, step)
    shards = [run_dir.shard(iteration, step, i, num_shards).summary() for i in range(num_shards)]
    counts = merge_shard_counts([s["counts"] for s in shards])
    digests = {
        f"shard-{i:05d}-of-{num_shards:05d}/{name}": d
        for i, s in enumerate(shards)
        for name, d in s["digests"].items()
    }
    sizes = {
        f"shard-{i:05d}-of-{num_shards:05d}/{name}": size
        for i, s in enumerate(shards)
        for name, size in (s.get("sizes") or {}).items()
    }
    summary = {
        "counts": counts,
        "digests": digests,
        "sizes": sizes,
        "num_shards": num_shards,
        "timings": merged_timings([s.get("timings") or {} for s in shards]),
    }
    from eva_runtime.artifacts import atomic_write_json

    atomic_write_json(StepDir(sd.path).marker, summary)
    return summary


def merged_timings(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """A sharded step's timings: the shards' seconds, parts and model loads added up."""
    seconds = round(sum(float(t.get("seconds", 0.0)) for t in shards), 3)
    parts = {
        name: sum(float((t.get("phases") or {}).get(name, 0.0)) for t in shards)
        for name in STEP_PARTS[:-1]
    }
    return {
        "seconds": seconds,
        "phases": split_seconds(parts, seconds),
        "loads": sum(int(t.get("loads", 0)) for t in shards),
    }


def quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {
        f"q{int(q * 100)}": float(v) for q, v in zip((0.0, 0.25, 0.5, 0.75, 1.0), qs, strict=True)
    }
