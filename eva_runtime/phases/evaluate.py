"""evaluate: held-out prompts, the new policy against the one it started from.

Both policies answer the same held-out prompts with the same sampling seed, so the
comparison is paired: win rate counts, per (prompt, sample), how often the new response
scores higher (ties count half). The previous policy's responses are reused from the
last iteration's evaluation when it exists, so each policy is evaluated once.

With a pairwise reward the two responses of each (prompt, sample) are compared directly:
the new response's reward is P(new beats previous), the previous one's 1 - P, and the win
rate is the mean P. (A mean win probability among one policy's own samples is 0.5 by
construction and says nothing about which policy is better.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_parquet
from eva_runtime.phases.context import Context
from eva_runtime.phases.generate import generate_and_score
from eva_runtime.progress import note, task
from eva_runtime.seeds import derive_seed
from eva_runtime.status import HEAD_TO_HEAD
from eva_runtime.timing import timed


def win_rate(new: np.ndarray, old: np.ndarray) -> float:
    if new.size == 0:
        return float("nan")
    return float(((new > old).sum() + 0.5 * (new == old).sum()) / new.size)


def compared(
    rm: Any, new: pd.DataFrame, prev: pd.DataFrame, *, label: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both policies' responses with reward P(new beats previous) and its complement."""
    key = ["prompt_id", "sample"]
    paired = new[[*key, "prompt", "response"]].merge(
        prev[[*key, "response"]], on=key, suffixes=("_new", "_prev")
    )
    with task(f"{label}: comparing", len(paired)) as advance, timed("score"):
        probs = rm.compare(
            paired["prompt"].tolist(),
            paired["response_new"].tolist(),
            paired["response_prev"].tolist(),
        )
        advance(len(paired))
    p = paired[key].assign(p=probs)
    new = new.drop(columns="reward").merge(p, on=key, how="left")
    prev = prev.drop(columns="reward").merge(p, on=key, how="left")
    new["reward"] = new.pop("p").fillna(0.5)
    prev["reward"] = 1.0 - prev.pop("p").fillna(0.5)
    return new, prev


def run_evaluate(ctx: Context, iteration: int) -> dict:
    from eva_runtime.backends.generation import SamplingParams

    rd = ctx.run_dir
    sd = rd.step(iteration, "evaluate")
    if not sd.begin():
        return sd.summary()
    rd.require(rd.step(iteration, "train"), f"the train step of iteration {iteration}")
    heldout = ctx.heldout()
    if heldout.empty:
        note(f"iter {iteration} evaluate: no held-out prompts (spec.prompts.heldOut is 0)")
        write_parquet(sd.path / "responses.parquet", pd.DataFrame())
        return sd.finish({"heldout": 0})
    e, g = ctx.spec.evaluation, ctx.spec.generation
    params = SamplingParams(
        n=e.samples_per_prompt,
        temperature=g.temperature if e.temperature is None else e.temperature,
        top_p=g.top_p,
        max_new_tokens=e.max_new_tokens or g.max_new_tokens,
        # One seed for every evaluation: policies are compared on the same random draws.
        seed=derive_seed(ctx.spec.seed, "evaluate"),
    )
    rm = ctx.reward_model()
    pairwise = hasattr(rm, "compare")
    generated = []  # what this step generated (a reused previous policy's answers cost nothing)
    try:
        prev = None
        if iteration > 0:
            last = rd.step(iteration - 1, "evaluate")
            if last.complete() and (last.path / "responses.parquet").exists():
                old = pd.read_parquet(last.path / "responses.parquet")
                if len(old) and "policy" in old:
                    prev = old[old["policy"] == "new"].assign(policy="previous")
        if prev is None:
            prev = generate_and_score(
                ctx,
                heldout,
                model_path=ctx.policy_path(iteration),
                iteration=iteration,
                params=params,
                label=f"iter {iteration} evaluate (previous policy)",
                reward_model=rm,
                score=not pairwise,
            ).assign(policy="previous")
            generated.append(prev)
        new = generate_and_score(
            ctx,
            heldout,
            model_path=str(rd.step(iteration, "train").path / "model"),
            iteration=iteration + 1,
            params=params,
            label=f"iter {iteration} evaluate (new policy)",
            reward_model=rm,
            score=not pairwise,
        ).assign(policy="new")
        generated.append(new)
        if pairwise:
            new, prev = compared(rm, new, prev, label=f"iter {iteration} evaluate")
    finally:
        rm.close()
    both = pd.concat([prev, new], ignore_index=True)
    write_parquet(sd.path / "responses.parquet", both)
    key = ["prompt_id", "sample"]
    paired = new.merge(prev, on=key, suffixes=("_new", "_prev"))
    counts = {
        "heldout": len(heldout),
        "samples": len(new),
        "reward_previous": float(prev["reward"].mean()),
        "reward_new": float(new["reward"].mean()),
        "reward_new_sem": float(new["reward"].std(ddof=1) / np.sqrt(len(new)))
        if len(new) > 1
        else 0.0,
        "win_rate": float(paired["reward_new"].mean())  # the mean P(new beats previous)
        if pairwise
        else win_rate(paired["reward_new"].to_numpy(), paired["reward_prev"].to_numpy()),
        "truncated_new": int((new["finish_reason"] == "length").sum()),
        "responses": sum(len(f) for f in generated),
        "tokens": int(sum(f["num_tokens"].sum() for f in generated)),
    }
    note(
        f"iter {iteration} evaluate: held-out reward {counts['reward_previous']:.4f} -> "
        f"{counts['reward_new']:.4f}, win rate {counts['win_rate']:.3f}"
    )
    # Under a pairwise reward each iteration's held-out reward is relative to its predecessor.
    return sd.finish(counts, **({"comparison": HEAD_TO_HEAD} if pairwise else {}))
