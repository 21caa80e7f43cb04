"""The EvaRun status the operator writes, as one typed model.

The CRD's status schema is generated from ``RunStatus`` (``eva_runtime.crd``), exactly as the
spec schema is generated from ``EvaRunSpec``: a key the operator writes and the model lacks is
a test failure here, not a field the API server silently prunes. The planner
(``eva_operator.plan``) fills ``HistoryEntry`` from the steps' summaries through
``HISTORY_FIELDS``. Light: pydantic only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from eva_runtime.api import PHASES

Phase = Literal[PHASES]  # type: ignore[valid-type]


def _time(description: str) -> JsonDict:
    return {"description": description, "format": "date-time"}


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Condition(_Status):
    """A Kubernetes-style condition; ``lastTransitionTime`` moves only when ``status`` flips."""

    type: str = Field(
        description="Running, Suspended, Succeeded, Failed or StepBlocked.",
        json_schema_extra={"minLength": 1},
    )
    status: Literal["True", "False", "Unknown"]
    reason: str | None = Field(default=None, description="Why the condition last changed.")
    message: str | None = Field(default=None, description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None, json_schema_extra=_time("When status last flipped.")
    )
    observed_generation: int | None = Field(default=None, json_schema_extra={"format": "int64"})


class StepRecord(_Status):
    """One finished step of an iteration."""

    job: str | None = Field(default=None, description="The Job that completed the step.")
    attempts: int | None = Field(default=None, description="Jobs it took (1 = no retry).")
    completion_time: str | None = Field(
        default=None, json_schema_extra=_time("When the step completed.")
    )
    seconds: float | None = Field(default=None, description="From its first Job to its end.")
    queued_seconds: float | None = Field(
        default=None, description="Its Job's creation to its first pod being scheduled."
    )
    startup_seconds: float | None = Field(
        default=None, description="Scheduled to the container started (image pull, mounts)."
    )
    running_seconds: float | None = Field(
        default=None, description="The first container's start to the last one's end."
    )
    part_seconds: dict[str, float] | None = Field(
        default=None,
        description="Where the step's own time went, as it measured it: seconds per part "
        "(download, load, unload, generate, score, evolve, train, write, other).",
    )
    model_loads: int | None = Field(default=None, description="Models the step loaded.")


class BenchScore(_Status):
    """One benchmark's result for one policy (``bench/<name>/...`` in the step's counts)."""

    score: float | None = Field(default=None, description="The suite's score.")
    ci_low: float | None = Field(default=None, description="Lower end of the 95% interval.")
    ci_high: float | None = Field(default=None, description="Upper end of the 95% interval.")
    base_score: float | None = Field(
        default=None, description="The base policy's score (iteration 0 only)."
    )
    judged: int | None = Field(default=None, description="Judgments the score used.")
    excluded: int | None = Field(default=None, description="Unparseable after retries.")
    errors: int | None = Field(default=None, description="Judge requests that failed.")


# The evaluate marker's "comparison" when the two policies were compared directly (a pairwise
# reward): each iteration's held-out reward is then P(new beats previous).
HEAD_TO_HEAD = "head-to-head"


def bench_key(name: str, field: str, base: bool = False) -> str:
    """The count (and MLflow metric) name of one benchmark result: ``bench/<name>/<field>``,
    ``base_<field>`` for the base policy."""
    return f"bench/{name}/{'base_' if base else ''}{field}"


def bench_results(counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A benchmark step's counts by benchmark: ``{name: {score, ci_low, base_score, ...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in counts.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "bench":
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


# Counts of a generation step that add up over its shards, whatever else a shard reports.
ADDITIVE_COUNTS = ("prompts", "responses", "tokens", "truncated")


def _number(value: Any) -> float | int | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def merge_shard_counts(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One generation step's counts from its shards' counts: additive counts summed, the
    reward extremes merged, ``reward_mean`` weighted by responses and ``reward_gap_mean`` by
    prompts. A shard without responses has no rewards to merge; values that are not finite
    numbers (a pod's message is outside data) are left out."""
    counts: dict[str, Any] = {}
    for shard in shards:
        if not _number(shard.get("responses")):
            continue
        for k, raw in shard.items():
            v = _number(raw)
            if v is None:
                continue
            if k == "reward_max":
                counts[k] = max(counts.get(k, v), v)
            elif k == "reward_min":
                counts[k] = min(counts.get(k, v), v)
            else:
                counts[k] = counts.get(k, 0) + v
    for k in ADDITIVE_COUNTS:
        counts[k] = sum(_number(s.get(k)) or 0 for s in shards)
    for mean, weight in (("reward_mean", "responses"), ("reward_gap_mean", "prompts")):
        total = counts[weight]
        if total and mean in counts:
            weighted = sum(
                (_number(s.get(mean)) or 0.0) * (_number(s.get(weight)) or 0) for s in shards
            )
            counts[mean] = weighted / total
    return counts


class HistoryEntry(_Status):
    """One iteration: its steps and the counts and metrics their summaries reported."""

    iteration: int = Field(description="The iteration, from 0.")
    steps: dict[str, StepRecord] = Field(
        default_factory=dict, description="Each finished step by name."
    )
    # prepare
    prompts: int | None = Field(default=None, description="Prompts generated for.")
    held_out: int | None = Field(default=None, description="Prompts set aside for evaluation.")
    # generate
    responses: int | None = Field(default=None, description="Responses sampled.")
    reward_mean: float | None = Field(default=None, description="Mean reward of the responses.")
    reward_gap: float | None = Field(default=None, description="Mean best-minus-worst reward.")
    tokens: int | None = Field(default=None, description="Tokens generated.")
    # create
    kept: int | None = Field(default=None, description="Prompts selected for evolving.")
    evolved: int | None = Field(default=None, description="Evolved prompts kept.")
    dropped: int | None = Field(default=None, description="Evolved prompts dropped.")
    buffer: int | None = Field(default=None, description="Original prompts kept as buffer.")
    next_prompts: int | None = Field(default=None, description="Prompts of the next set.")
    informativeness: float | None = Field(default=None, description="Mean informativeness.")
    prompt_set: str | None = Field(default=None, description="The next prompt set's path.")
    prompt_set_digest: str | None = Field(default=None, description="sha256 of that file.")
    # generate-evolved
    evolved_reward_mean: float | None = Field(default=None, description="On evolved prompts.")
    evolved_gap: float | None = Field(default=None, description="Mean gap on evolved prompts.")
    # train
    pairs: int | None = Field(default=None, description="Preference pairs trained on.")
    train_loss: float | None = Field(default=None, description="Final training loss.")
    reward_accuracy: float | None = Field(default=None, description="Implicit reward accuracy.")
    model: str | None = Field(default=None, description="The new policy's path.")
    # evaluate
    held_out_before: float | None = Field(default=None, description="Previous policy's reward.")
    held_out_reward: float | None = Field(default=None, description="New policy's reward.")
    win_rate: float | None = Field(default=None, description="New over previous policy.")
    # benchmark
    benchmarks: dict[str, BenchScore] | None = Field(
        default=None, description="Independent judged benchmarks of the new policy, by name."
    )


class RunStatus(_Status):
    """Written by the operator."""

    phase: Phase | None = None
    iteration: int | None = Field(default=None, description="The current step's iteration.")
    step: str | None = Field(default=None, description="The current step (prepare, generate, ...).")
    attempt: int | None = Field(
        default=None, description="The current step's attempt, from 0 (retries after a failure)."
    )
    retries: int | None = Field(default=None, description="Failed step attempts retried so far.")
    job: str | None = Field(default=None, description="The current step's Job.")
    reason: str | None = Field(default=None, description="Why the run failed (CamelCase).")
    message: str | None = Field(default=None, description="Human-readable details of the failure.")
    reward: float | None = Field(default=None, description="Held-out reward of the newest policy.")
    win_rate: float | None = Field(
        default=None, description="Held-out win rate of the newest policy."
    )
    start_time: str | None = Field(default=None, json_schema_extra=_time("When the run started."))
    step_start_time: str | None = Field(
        default=None, json_schema_extra=_time("When the current step's first Job was created.")
    )
    completion_time: str | None = Field(
        default=None, json_schema_extra=_time("When the run succeeded or failed.")
    )
    observed_generation: int | None = Field(
        default=None,
        description="The spec generation the operator last acted on.",
        json_schema_extra={"format": "int64"},
    )
    mlflow_run_id: str | None = Field(
        default=None, description="The MLflow run id the latest step reported."
    )
    completed: list[str] = Field(
        default_factory=list, description="Complete steps: 'prepare', then 'ITERATION/STEP'."
    )
    conditions: list[Condition] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(
        default_factory=list,
        description="One entry per iteration: its steps' Jobs, counts and metrics.",
    )


# Counts copied from step summaries (``counts`` in a step's termination message) into the
# iteration's history entry: step -> {count: HistoryEntry field, camelCase}.
HISTORY_FIELDS: dict[str, dict[str, str]] = {
    "prepare": {"prompts": "prompts", "heldout": "heldOut"},
    "generate": {
        "prompts": "prompts",
        "responses": "responses",
        "reward_mean": "rewardMean",
        "reward_gap_mean": "rewardGap",
        "tokens": "tokens",
    },
    "create": {
        "selected": "kept",
        "evolved": "evolved",
        "dropped": "dropped",
        "buffer": "buffer",
        "mixed": "nextPrompts",
        "informativeness_mean": "informativeness",
    },
    "generate-evolved": {"reward_mean": "evolvedRewardMean", "reward_gap_mean": "evolvedGap"},
    "train": {"pairs": "pairs", "train_loss": "trainLoss", "reward_accuracy": "rewardAccuracy"},
    "evaluate": {
        "reward_previous": "heldOutBefore",
        "reward_new": "heldOutReward",
        "win_rate": "winRate",
    },
}
