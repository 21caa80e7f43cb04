"""What decides how one iteration's policy is trained (TrainSettings, LoraSettings) and
what the training reports (TrainResult): plain data, validated against the spec's solver
section, with no ML library imported."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from eva_runtime.spec import LoraSpec, SolverSpec

# The spec's defaults are the library's: one statement of each, in ``eva_runtime.spec``.
_SOLVER = SolverSpec()
_LORA = LoraSpec()
# TrainSettings' names for the spec's solver fields where they differ.
_SPEC_NAMES = {"num_processes": "processes"}


def _check_against_spec(model: type[SolverSpec] | type[LoraSpec], owner: str, values: dict) -> None:
    """Validate ``values`` with the spec model that defines their bounds; a ValueError
    naming ``owner``'s field (a pydantic error would name the spec's)."""
    names = {v: k for k, v in _SPEC_NAMES.items()}
    try:
        model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = names.get(where, where)
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{owner}: {field + ': ' if field else ''}{message}") from None


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings; ``merge`` decides what the next iteration gets to load.

    Merged weights keep the eva loop uniform (every iteration's policy is a plain
    transformers folder that vLLM can serve); an unmerged adapter is far smaller on disk
    when the base model is large and many iterations are kept.
    """

    r: int = _LORA.r
    alpha: int = _LORA.alpha
    dropout: float = _LORA.dropout
    target_modules: tuple[str, ...] | None = None
    merge: bool = _LORA.merge

    def __post_init__(self) -> None:
        _check_against_spec(LoraSpec, "LoraSettings", dataclasses.asdict(self))


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides how one iteration's policy is trained.

    Validated on construction so that a bad value fails before models are loaded or
    worker processes launched.
    """

    algorithm: str = _SOLVER.algorithm
    beta: float = _SOLVER.beta
    learning_rate: float = _SOLVER.learning_rate
    epochs: float = _SOLVER.epochs
    per_device_batch_size: int = _SOLVER.per_device_batch_size
    gradient_accumulation_steps: int = 1
    max_length: int = _SOLVER.max_length
    warmup_ratio: float = _SOLVER.warmup_ratio
    lr_scheduler: str = _SOLVER.lr_scheduler
    simpo_gamma: float = _SOLVER.simpo_gamma
    loss_type: str = _SOLVER.loss_type  # algorithm dpo: one of spec.DPO_LOSS_TYPES
    rpo_alpha: float = _SOLVER.rpo_alpha  # algorithm rpo: weight of the chosen response's NLL
    label_smoothing: float = _SOLVER.label_smoothing  # loss types robust, exo_pair
    discopop_tau: float = _SOLVER.discopop_tau  # loss type discopop
    lora: LoraSettings | None = None
    precision: str = _SOLVER.precision
    gradient_checkpointing: bool = _SOLVER.gradient_checkpointing
    seed: int = 42
    num_processes: int = _SOLVER.processes
    deepspeed: str = _SOLVER.deepspeed
    logging_steps: int = 1

    def __post_init__(self) -> None:
        # The fields the spec's solver section shares are checked by the spec itself: one
        # set of bounds and cross-field rules, whichever way a training is asked for.
        shared = {
            _SPEC_NAMES.get(f.name, f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if _SPEC_NAMES.get(f.name, f.name) in SolverSpec.model_fields and f.name != "lora"
        }
        _check_against_spec(SolverSpec, "TrainSettings", shared)
        for name in ("gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainResult:
    """What the loop records about an iteration's training, besides the policy itself."""

    model_dir: str
    steps: int
    train_loss: float | None
    history: list[dict]
    reward_accuracy: float | None
    num_pairs: int


def settings_to_dict(settings: TrainSettings) -> dict[str, Any]:
    """JSON-ready form, used to hand settings to launched worker processes."""
    return dataclasses.asdict(settings)


def settings_from_dict(data: Mapping[str, Any]) -> TrainSettings:
    """Inverse of :func:`settings_to_dict` (JSON turns tuples into lists, undone here)."""
    fields = dict(data)
    lora_data = fields.pop("lora", None)
    lora: LoraSettings | None = None
    if lora_data is not None:
        lora_fields = dict(lora_data)
        if lora_fields.get("target_modules") is not None:
            lora_fields["target_modules"] = tuple(lora_fields["target_modules"])
        lora = LoraSettings(**lora_fields)
    return TrainSettings(**fields, lora=lora)
