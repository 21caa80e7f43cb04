"""generate / generate-evolved: n scored responses per prompt from the current policy.

The prompt set is split over ``num_shards`` workers (prompt i goes to shard i mod N); each
shard writes its own folder and marker, and whichever shard completes the set writes
the step's marker. Randomness is derived from the run seed, iteration, step and shard,
so a shard run twice writes the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_parquet
from eva_runtime.errors import StepError
from eva_runtime.metrics import current as current_metrics
from eva_runtime.phases.context import (
    PREFERENCES_COLUMN,
    ROLLOUT_COLUMNS,
    Context,
    finalize_sharded,
)
from eva_runtime.progress import note, task
from eva_runtime.seeds import derive_seed
from eva_runtime.timing import timed

if TYPE_CHECKING:
    from eva_runtime.backends.protocol import SamplingParams
    from eva_runtime.backends.reward_model import RewardModel


def _sampling(ctx: Context, seed: int) -> SamplingParams:
    from eva_runtime.backends.generation import SamplingParams

    g = ctx.spec.generation
    return SamplingParams(
        n=g.samples_per_prompt,
        temperature=g.temperature,
        top_p=g.top_p,
        max_new_tokens=g.max_new_tokens,
        seed=seed,
    )


def generate_and_score(
    ctx: Context,
    prompts: pd.DataFrame,
    *,
    model_path: str,
    iteration: int,
    params: SamplingParams,
    label: str,
    reward_model: RewardModel | None = None,
    score: bool = True,
) -> pd.DataFrame:
    """Responses and rewards for ``prompts`` as a long table (one row per response).

    ``score=False`` leaves the reward 0.0 for a caller that scores the responses itself.
    """
    if prompts.empty:
        return pd.DataFrame({c: [] for c in ROLLOUT_COLUMNS})
    texts = prompts["prompt"].tolist()
    metrics = current_metrics()
    metrics.add_prompts_total(len(texts))
    generator = ctx.policy_generator(model_path, iteration)
    try:
        with task(f"{label}: generating", len(texts)) as advance:

            def progressed(k: int) -> None:
                advance(k)
                metrics.prompts_done(k)

            with timed("generate"):
                completions = generator.generate(
                    texts, params, system=ctx.spec.generation.system_prompt, on_progress=progressed
                )
    finally:
        generator.close()
    metrics.tokens_generated(sum(c.num_tokens for outs in completions for c in outs))
    rows = []
    for order, (pid, prompt, outs) in enumerate(
        zip(prompts["prompt_id"], texts, completions, strict=True)
    ):
        for j, c in enumerate(outs):
            rows.append((order, pid, prompt, j, c.text, c.finish_reason, c.num_tokens))
    frame = pd.DataFrame(rows, columns=list(ROLLOUT_COLUMNS[:-1]))
    if not score:
        return frame.assign(reward=0.0)
    own = reward_model is None
    rm = reward_model if reward_model is not None else ctx.reward_model()
    preferences = None
    try:
        with task(f"{label}: scoring", len(frame)) as advance, timed("score"):
            texts, answers = frame["prompt"].tolist(), frame["response"].tolist()
            if hasattr(rm, "score_with_matrix"):  # pairwise: keep the preference matrix too
                scores, preferences = rm.score_with_matrix(texts, answers, on_progress=advance)
            else:
                scores = rm.score(texts, answers, on_progress=advance)
    finally:
        if own:
            rm.close()
    metrics.responses_scored(len(frame))
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        r = frame.iloc[int(bad[0])]
        raise StepError(
            f"reward model gave {scores[bad[0]]!r} for prompt {r['prompt_id']!r} "
            f"(sample {r['sample']}); rewards must be finite"
        )
    frame = frame.assign(reward=scores)
    if preferences is not None:
        # Row k: P(this response beats sample j of its prompt), j = 0..n-1 (itself 0.5).
        frame[PREFERENCES_COLUMN] = preferences
    return frame


def run_generate(
    ctx: Context, iteration: int, step: str = "generate", shard: int = 0, num_shards: int = 1
) -> dict:
    if step not in ("generate", "generate-evolved"):
        raise ValueError(step)
    if not (0 <= shard < num_shards):
        raise StepError(f"--shard {shard} is outside 0..{num_shards - 1}")
    rd = ctx.run_dir
    sd = rd.shard(iteration, step, shard, num_shards)
    if sd.begin():
        prompts = ctx.prompt_set(iteration) if step == "generate" else ctx.evolved_set(iteration)
        mine = prompts.iloc[shard::num_shards]
        label = f"iter {iteration} {step}" + (
            f" [{shard + 1}/{num_shards}]" if num_shards > 1 else ""
        )
        if mine.empty:
            note(f"{label}: no prompts in this shard")
            frame = pd.DataFrame({c: [] for c in ROLLOUT_COLUMNS})
        else:
            policy = ctx.policy_path(iteration)
            params = _sampling(ctx, derive_seed(ctx.spec.seed, iteration, step, shard))
            frame = generate_and_score(
                ctx, mine, model_path=policy, iteration=iteration, params=params, label=label
            )
            # Keep the position in the whole set, so shards merge back in prompt order.
            frame["order"] = mine.index.to_numpy()[frame["order"].to_numpy()]
        write_parquet(sd.path / "rollouts.parquet", frame)
        rewards = frame["reward"].to_numpy(dtype=np.float64)
        gaps = frame.groupby("prompt_id", sort=False)["reward"].agg(lambda s: s.max() - s.min())
        sd.finish(
            {
                "prompts": len(mine),
                "responses": len(frame),
                "truncated": int((frame["finish_reason"] == "length").sum()),
                "tokens": int(frame["num_tokens"].sum()) if len(frame) else 0,
                "reward_mean": float(rewards.mean()) if rewards.size else 0.0,
                "reward_max": float(rewards.max()) if rewards.size else 0.0,
                "reward_min": float(rewards.min()) if rewards.size else 0.0,
                "reward_gap_mean": float(gaps.mean()) if len(gaps) else 0.0,
            },
            shard=shard,
            num_shards=num_shards,
        )
    summary = finalize_sharded(rd, iteration, step, num_shards)
    return summary if summary is not None else sd.summary()
