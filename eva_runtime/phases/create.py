"""create: informativeness -> sample -> evolve -> clean -> mix with the buffer.

Outputs (all parquet): ``scores`` (one row per prompt of X_t: reward stats,
informativeness, sampling weight, selected), ``evolved`` (the new prompts with lineage:
parent id, root id, method, iteration, depth, parent informativeness), ``dropped``
(evolver replies that were not kept, with the reason: nothing is lost silently) and
``mixed`` = X_{t+1}: the evolved prompts plus the buffer, prompts of X_t whose responses
form a pair, in the share ``bufferRatio``. When cleaning leaves no evolved prompt, the
buffer is every usable prompt of X_t and the step says so (warning, ``evolved_empty``).

Evolved prompts that are exact or near duplicates of a held-out prompt or of a benchmark
question (every turn of every question of ``evaluation.benchmarks``) are dropped as
``contaminated`` and counted (``dropped_contaminated``, always present): otherwise the
policy could train on what evaluates it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_parquet
from eva_runtime.creator import informativeness, normalised_weights, sample_prompts
from eva_runtime.creator.contamination import ContaminationIndex, contamination_index
from eva_runtime.creator.evolve import (
    Candidate,
    clean_evolved,
    evolve_request,
    plan_methods,
    prompt_id,
)
from eva_runtime.metrics import current as current_metrics
from eva_runtime.phases.context import Context, quantiles, reward_matrix
from eva_runtime.progress import note, task, warn
from eva_runtime.seeds import derive_seed
from eva_runtime.solver.pairs import preference_pairs
from eva_runtime.timing import timed

LINEAGE = ["prompt_id", "prompt", "parent_id", "root_id", "method", "iteration", "depth", "origin"]


def buffer_size(num_evolved: int, ratio: float, available: int) -> int:
    """Buffer prompts so they make ``ratio`` of the mix: b / (b + e) = ratio."""
    if num_evolved == 0:
        return available
    return min(available, math.floor(num_evolved * ratio / (1.0 - ratio) + 0.5))


def run_create(ctx: Context, iteration: int) -> dict:
    rd = ctx.run_dir
    sd = rd.step(iteration, "create")
    if not sd.begin():
        return sd.summary()
    c = ctx.spec.creator
    prompts = ctx.prompt_set(iteration)
    rollouts = ctx.rollouts(iteration, "generate")
    ids, rewards, stop = reward_matrix(rollouts)
    by_id = prompts.set_index("prompt_id")
    scores = informativeness(rewards, c.informativeness, ids=ids)
    seed = derive_seed(ctx.spec.seed, iteration, "create")
    selected = sample_prompts(scores, c.sample_fraction, c.sampling, seed=seed)
    chosen = np.zeros(len(ids), dtype=bool)
    chosen[selected] = True
    table = pd.DataFrame(
        {
            "prompt_id": ids,
            "reward_mean": rewards.mean(axis=1) if len(ids) else [],
            "reward_max": rewards.max(axis=1) if len(ids) else [],
            "reward_min": rewards.min(axis=1) if len(ids) else [],
            "informativeness": scores,
            "weight": normalised_weights(scores),
            "selected": chosen,
        }
    )
    write_parquet(sd.path / "scores.parquet", table)

    parents = by_id.loc[[ids[i] for i in selected]].reset_index()
    parent_score = dict(zip(ids, scores, strict=True))
    evolved, dropped, evolve_tokens = _evolve(ctx, iteration, parents, prompts, seed)
    evolved["parent_informativeness"] = evolved["parent_id"].map(parent_score).astype("float64")
    write_parquet(sd.path / "evolved.parquet", evolved)
    write_parquet(sd.path / "dropped.parquet", dropped)

    # Buffer: prompts of X_t that give a pair (not tied), chosen uniformly.
    pair_valid = stop if ctx.spec.generation.truncated == "drop" else None
    pairable = preference_pairs(rewards, pair_valid).prompt if len(ids) else np.zeros(0, int)
    if c.evolve.method == "none":
        pairable = np.setdiff1d(pairable, selected)
    rng = np.random.default_rng(derive_seed(ctx.spec.seed, iteration, "buffer"))
    k = buffer_size(len(evolved), c.buffer_ratio, len(pairable))
    buf_rows = np.sort(rng.choice(pairable, size=k, replace=False)) if k else np.zeros(0, int)
    buffer = by_id.loc[[ids[i] for i in buf_rows]].reset_index()
    buffer = buffer.assign(origin="buffer")
    empty = len(evolved) == 0
    if empty:
        warn(
            f"iteration {iteration}: no evolved prompt survived cleaning "
            f"({len(dropped)} dropped); the iteration goes on with the buffer "
            f"({len(buffer)} original prompts)"
        )
    mixed = pd.concat([evolved[LINEAGE], buffer[LINEAGE]], ignore_index=True)
    write_parquet(sd.path / "mixed.parquet", mixed)
    reasons = dropped["reason"].value_counts().to_dict() if len(dropped) else {}
    counts = {
        "prompts": len(ids),
        "selected": int(selected.size),
        "evolve_requests": int(selected.size * c.evolve.variants_per_prompt)
        if c.evolve.method != "none"
        else 0,
        "evolve_tokens": evolve_tokens,
        "evolved": len(evolved),
        "dropped": len(dropped),
        "dropped_contaminated": int(reasons.get("contaminated", 0)),
        **{f"dropped_{k}": int(v) for k, v in reasons.items()},
        "buffer": len(buffer),
        "mixed": len(mixed),
        "evolved_empty": int(empty),
        "informativeness_mean": float(scores.mean()) if scores.size else 0.0,
        **{f"informativeness_{k}": v for k, v in quantiles(scores).items()},
    }
    contaminated = counts["dropped_contaminated"]
    note(
        f"iter {iteration} create: {counts['selected']}/{len(ids)} prompts selected, "
        f"{len(evolved)} evolved kept, {len(dropped)} dropped"
        + (f" ({contaminated} contaminated)" if contaminated else "")
        + f", {len(buffer)} buffer"
    )
    return sd.finish(counts)


def _evolve(
    ctx: Context, iteration: int, parents: pd.DataFrame, prompts: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(evolved prompts, dropped candidates, tokens the evolver generated)."""
    c = ctx.spec.creator
    empty_dropped = pd.DataFrame(
        {"parent_id": [], "method": [], "reply": [], "parsed": [], "reason": []}
    ).astype("string")
    if c.evolve.method == "none" or parents.empty:
        # Select only: the kept prompts themselves are the next set's new part.
        out = parents.assign(method="select", iteration=iteration, origin="evolved")
        return out[LINEAGE].reset_index(drop=True), empty_dropped, 0
    from eva_runtime.backends.generation import SamplingParams

    # Built before the evolver runs, so an unreadable benchmark file fails the step early.
    contamination = reference_index(ctx)
    ev = c.evolve.evolver
    plan = plan_methods(len(parents), c.evolve.variants_per_prompt, seed)
    # One request per (parent, method); ``origins`` says whose rewrite each reply is.
    origins: list[tuple[int, str]] = []
    requests: list[str] = []
    for k, (row, methods) in enumerate(zip(parents.itertuples(index=False), plan, strict=True)):
        for m in methods:
            requests.append(evolve_request(row.prompt, m))
            origins.append((k, m))
    params = SamplingParams(
        n=1,
        temperature=ev.temperature,
        top_p=ev.top_p,
        max_new_tokens=ev.max_new_tokens,
        seed=derive_seed(ctx.spec.seed, iteration, "evolve"),
    )
    metrics = current_metrics()
    metrics.evolve_attempts(len(requests))
    policy = ctx.policy_path(iteration)
    generator = ctx.evolver_generator(policy, iteration)
    try:
        with task(f"iter {iteration} create: evolving", len(requests)) as advance, timed("evolve"):
            replies = generator.generate(requests, params, on_progress=advance)
    finally:
        generator.close()
    candidates = []
    for (k, method), outs in zip(origins, replies, strict=True):
        parent = parents.iloc[k]
        candidates.append(
            Candidate(
                parent_id=str(parent["prompt_id"]),
                parent=str(parent["prompt"]),
                method=method,
                reply=outs[0].text,
            )
        )
    cleaned = clean_evolved(
        candidates,
        existing=prompts["prompt"].tolist(),
        near_duplicate_threshold=c.evolve.near_duplicate_threshold,
        min_chars=c.evolve.min_chars,
        contamination=contamination,
    )
    for reason, k in cleaned.counts().items():
        metrics.evolve_rejected(reason, k)
    lineage = parents.set_index("prompt_id")
    rows = []
    for cand, text in cleaned.kept:
        p = lineage.loc[cand.parent_id]
        rows.append(
            {
                "prompt_id": prompt_id(text, f"e{iteration}"),
                "prompt": text,
                "parent_id": cand.parent_id,
                "root_id": p["root_id"],
                "method": cand.method,
                "iteration": iteration,
                "depth": int(p["depth"]) + 1,
                "origin": "evolved",
            }
        )
    evolved = pd.DataFrame(rows, columns=LINEAGE)
    evolved = evolved.astype({"iteration": "int64", "depth": "int64"})
    dropped = pd.DataFrame(
        [
            {
                "parent_id": cand.parent_id,
                "method": cand.method,
                "reply": cand.reply,
                "parsed": text,
                "reason": reason,
            }
            for cand, text, reason in cleaned.dropped
        ],
        columns=["parent_id", "method", "reply", "parsed", "reason"],
    ).astype("string")
    return evolved, dropped, sum(o.num_tokens for outs in replies for o in outs)


def reference_index(ctx: Context) -> ContaminationIndex:
    """What evolved prompts must not copy: held-out prompts and every benchmark turn.

    A benchmark file that cannot be read fails the step with ``read_questions``'s
    ``InputError`` (file and line). All questions count, whatever the benchmark's ``limit``:
    a question left out of scoring now may be scored by a later run on the same policy.
    """
    from eva_runtime.bench.formats import read_questions

    references = [str(p) for p in ctx.heldout()["prompt"]]
    for bench in ctx.spec.evaluation.benchmarks:
        for q in read_questions(bench.suite, bench.questions):
            references.extend(q.turns)
    return contamination_index(references, ctx.spec.creator.evolve.contamination_threshold)
