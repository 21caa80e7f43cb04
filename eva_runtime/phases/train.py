"""train: best-vs-worst pairs from this iteration's rollouts, then preference optimisation.

With the creator on, pairs come from the evolved prompts' rollouts plus the buffer
prompts' rollouts (the buffer was chosen by the create step, in the share bufferRatio);
with it off (the classic iterative-DPO baseline) from every prompt of X_t. The policy of
this iteration is both the start point and the reference. The new policy is saved as a
transformers folder at ``train/model``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_parquet
from eva_runtime.errors import StepError
from eva_runtime.metrics import current as current_metrics
from eva_runtime.phases.context import Context, reward_matrix
from eva_runtime.progress import note, task, warn
from eva_runtime.seeds import derive_seed
from eva_runtime.solver.pairs import preference_pairs, win_probabilities
from eva_runtime.timing import timed

if TYPE_CHECKING:
    from eva_runtime.solver.settings import TrainSettings


def pairs_from(
    rollouts: pd.DataFrame,
    *,
    drop_truncated: bool,
    origin: str,
    probabilities: bool = False,
    pairwise: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Best-vs-worst pairs; ``probabilities`` adds each side's estimated win probability
    against the policy (``chosen_prob``, ``rejected_prob``: what SPPO trains towards)."""
    ids, rewards, stop = reward_matrix(rollouts)
    if not ids:
        return pd.DataFrame(), {"tied": 0, "too_few": 0}
    idx = preference_pairs(rewards, stop if drop_truncated else None)
    n = rewards.shape[1]
    responses = rollouts["response"].to_numpy().reshape(len(ids), n)
    prompts = rollouts["prompt"].to_numpy().reshape(len(ids), n)[:, 0]
    frame = pd.DataFrame(
        {
            "prompt_id": np.asarray(ids, dtype=object)[idx.prompt],
            "prompt": prompts[idx.prompt],
            "chosen": responses[idx.prompt, idx.chosen],
            "rejected": responses[idx.prompt, idx.rejected],
            "chosen_reward": rewards[idx.prompt, idx.chosen],
            "rejected_reward": rewards[idx.prompt, idx.rejected],
            "origin": origin,
        }
    )
    if probabilities:
        p = win_probabilities(rewards, pairwise=pairwise)
        frame["chosen_prob"] = p[idx.prompt, idx.chosen]
        frame["rejected_prob"] = p[idx.prompt, idx.rejected]
    return frame, {"tied": idx.tied, "too_few": idx.too_few}


def train_settings(ctx: Context, num_pairs: int, iteration: int) -> TrainSettings:
    from eva_runtime.solver.settings import LoraSettings, TrainSettings

    s = ctx.spec.solver
    per_step = s.per_device_batch_size * s.processes
    # Effective batch as asked, but never more than the data holds (tiny runs still step).
    effective = max(per_step, min(s.effective_batch_size, num_pairs))
    lora = None
    if s.lora.enabled:
        lora = LoraSettings(
            r=s.lora.r,
            alpha=s.lora.alpha,
            dropout=s.lora.dropout,
            target_modules=tuple(s.lora.target_modules) if s.lora.target_modules else None,
            merge=s.lora.merge,
        )
    return TrainSettings(
        algorithm=s.algorithm,
        beta=s.beta,
        learning_rate=s.learning_rate,
        epochs=s.epochs,
        per_device_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=max(1, math.ceil(effective / per_step)),
        max_length=s.max_length,
        warmup_ratio=s.warmup_ratio,
        lr_scheduler=s.lr_scheduler,
        simpo_gamma=s.simpo_gamma,
        loss_type=s.loss_type,
        rpo_alpha=s.rpo_alpha,
        label_smoothing=s.label_smoothing,
        discopop_tau=s.discopop_tau,
        lora=lora,
        precision=s.precision,
        gradient_checkpointing=s.gradient_checkpointing,
        seed=derive_seed(ctx.spec.seed, iteration, "train"),
        num_processes=s.processes,
        deepspeed=s.deepspeed,
    )


def run_train(ctx: Context, iteration: int) -> dict:
    rd = ctx.run_dir
    sd = rd.step(iteration, "train")
    if sd.complete():
        return sd.summary()
    upstream = (
        ("generate", "create", "generate-evolved") if ctx.spec.creator.enabled else ("generate",)
    )
    for step in upstream:
        rd.require(rd.step(iteration, step), f"the {step} step of iteration {iteration}")
    sd.begin()
    drop = ctx.spec.generation.truncated == "drop"
    parts, stats = [], {"tied": 0, "too_few": 0}
    if ctx.spec.creator.enabled:
        mixed = pd.read_parquet(rd.step(iteration, "create").path / "mixed.parquet")
        buffer_ids = set(mixed.loc[mixed["origin"] == "buffer", "prompt_id"])
        base = ctx.rollouts(iteration, "generate")
        sources = [
            (ctx.rollouts(iteration, "generate-evolved"), "evolved"),
            (base[base["prompt_id"].isin(buffer_ids)], "buffer"),
        ]
    else:
        sources = [(ctx.rollouts(iteration, "generate"), "original")]
    sppo = ctx.spec.solver.algorithm == "sppo"
    for rollouts, origin in sources:
        frame, st = pairs_from(
            rollouts,
            drop_truncated=drop,
            origin=origin,
            probabilities=sppo,
            pairwise=ctx.spec.reward_model.type == "pairwise",
        )
        parts.append(frame)
        for k in stats:
            stats[k] += st[k]
    pairs = (
        pd.concat([p for p in parts if len(p)], ignore_index=True)
        if any(len(p) for p in parts)
        else pd.DataFrame(columns=["prompt_id", "prompt", "chosen", "rejected", "origin"])
    )
    write_parquet(sd.path / "pairs.parquet", pairs)
    policy = ctx.policy_path(iteration)
    counts: dict = {
        "pairs": len(pairs),
        "pairs_evolved": int((pairs["origin"] == "evolved").sum()) if len(pairs) else 0,
        "pairs_buffer": int((pairs["origin"] == "buffer").sum()) if len(pairs) else 0,
        "tied_dropped": stats["tied"],
        "too_few_dropped": stats["too_few"],
    }
    if pairs.empty:
        warn(
            f"iteration {iteration}: no preference pairs (every prompt's rewards tied); "
            "the policy is carried over unchanged"
        )
        if not Path(policy).is_dir():
            raise StepError(
                f"iteration {iteration}: no preference pairs to train on, and the policy "
                f"{policy!r} is not a local folder that could be carried over"
            )
        with timed("write"):
            shutil.copytree(policy, sd.path / "model")
        return sd.finish({**counts, "steps": 0, "trained": 0, "train_tokens": 0}, policy=policy)
    from eva_runtime.solver.data import pair_tokens
    from eva_runtime.solver.train import train_policy

    settings = train_settings(ctx, len(pairs), iteration)
    history: list[dict] = []
    note(
        f"iter {iteration} train: {settings.algorithm} on {len(pairs)} pairs "
        f"({counts['pairs_evolved']} evolved, {counts['pairs_buffer']} buffer; "
        f"{stats['tied']} tied dropped) from {policy}"
    )
    expected = max(
        1,
        math.ceil(
            settings.epochs
            * math.ceil(len(pairs) / (settings.per_device_batch_size * settings.num_processes))
            / settings.gradient_accumulation_steps
        ),
    )
    with task(f"iter {iteration} train", expected) as advance:
        last = [0]

        metrics = current_metrics()

        def on_log(entry: dict) -> None:
            if "loss" in entry:
                history.append(entry)
                metrics.train_progress(
                    int(entry.get("step", 0)), entry.get("loss"), entry.get("learning_rate")
                )
            step = int(entry.get("step", 0))
            if step > last[0]:
                advance(step - last[0])
                last[0] = step

        columns = ["prompt", "chosen", "rejected"] + (
            ["chosen_prob", "rejected_prob"] if sppo else []
        )
        records = pairs[columns].to_dict("records")
        if ctx.spec.generation.system_prompt:
            for r in records:
                r["system"] = ctx.spec.generation.system_prompt
        result = train_policy(
            records,
            model_path=policy,
            output_dir=str(sd.path / "model"),
            settings=settings,
            on_log=on_log,
        )
    tokens = pair_tokens(records, policy, settings.max_length)
    hist = pd.DataFrame(result.history or history)
    write_parquet(sd.path / "history.parquet", hist.astype("float64", errors="ignore"))
    counts.update(
        {
            "steps": result.steps,
            "trained": 1,
            "train_tokens": int(tokens * settings.epochs),
            "train_loss": float(result.train_loss) if result.train_loss is not None else None,
            "reward_accuracy": result.reward_accuracy,
        }
    )
    return sd.finish(counts, policy=policy, algorithm=settings.algorithm)
