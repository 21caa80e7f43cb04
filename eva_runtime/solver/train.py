"""Preference optimisation of the solver policy on the pairs one eva iteration produced.

eva alternates between evolving prompts and training the solver on preference pairs
gathered for those prompts, and every iteration starts from the previous iteration's
policy. That shapes the design here:

* One call maps (pairs, start policy folder) to a new policy folder, so the loop can
  chain iterations and resume from any folder on disk.
* The reference policy of DPO/IPO is the start policy of *this* iteration. TRL would
  otherwise rebuild the reference from ``model.config._name_or_path``, which is not the
  start folder whenever the policy object came from somewhere else (a base checkpoint
  name, a renamed folder); iterative DPO then silently regularises towards the wrong
  model. We load the reference ourselves from ``model_path``.
* The output is written to a sibling ``.tmp`` folder and renamed into place, so a crash
  never leaves a half-written policy that the next iteration would load.
* Multi-process training runs in subprocesses under ``accelerate launch``: the launcher
  owns process-group set-up, and the calling process (often a long-lived orchestrator
  that also holds an inference engine) stays free of a distributed context.

torch, transformers, trl, peft, datasets and accelerate are imported inside functions so
that the orchestration code can import this module (for the settings types) on machines
that only coordinate and never train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eva_runtime.backends._common import free_torch_memory
from eva_runtime.spec import LoraSpec, SolverSpec
from eva_runtime.timing import timed

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import Trainer, TrainerCallback, TrainingArguments

logger = logging.getLogger(__name__)

# Prefix of the stdout lines through which launched workers stream their log records
# back to the parent; everything else on stdout is ordinary output.
LOG_MARKER = "EVA_TRAIN_LOG "

_REFERENCE_FREE = frozenset({"simpo", "orpo"})
# Algorithm sppo: each pair's estimated win probabilities of its two responses.
PROBABILITY_KEYS = ("chosen_prob", "rejected_prob")
_ONE_TRAINING = threading.Lock()
_STDERR_TAIL_LINES = 60


# The spec's defaults are the library's: one statement of each, in ``eva_runtime.spec``.
_SOLVER = SolverSpec()
_LORA = LoraSpec()
# TrainSettings' names for the spec's solver fields where they differ.
_SPEC_NAMES = {"num_processes": "processes"}


def _check_against_spec(model: type[SolverSpec] | type[LoraSpec], owner: str, values: dict) -> None:
    """Validate ``values`` with the spec model that defines their bounds; a ValueError
    naming ``owner``'s field (a pydantic error would name the spec's)."""
    from pydantic import ValidationError

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


def train_policy(
    pairs: Sequence[Mapping[str, str]],
    *,
    model_path: str,
    output_dir: str,
    settings: TrainSettings,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train the policy at ``model_path`` on preference ``pairs`` and save it to ``output_dir``.

    Each pair holds the user ``prompt`` and the assistant's ``chosen`` and ``rejected``
    responses as plain text; the model's chat template turns them into token sequences,
    so the policy is optimised on exactly the format it is later sampled with.
    ``on_log`` receives every log record as it happens, also from launched workers.
    """
    records = _validated_pairs(pairs)
    _check_start_folder(model_path)
    if settings.num_processes > 1 or settings.deepspeed != "none":
        # The workers load, train and save out of this process's sight: all of it is "train".
        with timed("train"):
            result = _train_launched(
                records,
                model_path=model_path,
                output_dir=output_dir,
                settings=settings,
                on_log=on_log,
            )
        return dataclasses.replace(result, model_dir=str(Path(output_dir)))
    return train_in_this_process(
        records, model_path=model_path, output_dir=output_dir, settings=settings, on_log=on_log
    )


def train_in_this_process(
    records: Sequence[Mapping[str, str]],
    *,
    model_path: str,
    output_dir: str,
    settings: TrainSettings,
    on_log: Callable[[dict], None] | None = None,
    dataset_dir: str | None = None,
) -> TrainResult:
    """Run training in the current process; each launched worker runs exactly this too.

    Under a distributed launch every rank calls it; only the main rank writes the
    policy folder and reports logs, the others take part in the collectives.
    ``dataset_dir`` is the pairs as a saved dataset that every rank reads (see
    ``_train_launched``); without it the dataset is built in memory from ``records``.
    """
    records = _validated_pairs(records)
    history: list[dict] = []
    # accelerate keeps one process-wide AcceleratorState, which a finishing trainer resets,
    # and TRL's lazy imports race when two threads first touch them: two trainings in threads
    # of one process (a library caller, the tests' in-process pods) would break each other,
    # so they take turns. A step pod trains once; nothing waits there.
    with _ONE_TRAINING, tempfile.TemporaryDirectory(prefix="eva-train-") as scratch:
        with timed("load"):  # the policy, the reference and the tokenised pairs
            trainer = _build_trainer(
                records,
                model_path=model_path,
                settings=settings,
                scratch_dir=scratch,
                callbacks=[_log_callback(history, on_log)],
                dataset_dir=dataset_dir,
            )
        try:
            with timed("train"):
                output = trainer.train()
            with timed("write"):
                _save_policy(
                    trainer, model_path=model_path, output_dir=output_dir, settings=settings
                )
        finally:
            _release(trainer)
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    return TrainResult(
        model_dir=str(Path(output_dir)),
        steps=int(output.global_step),
        train_loss=_as_float(output.training_loss),
        history=history,
        # sppo's logged rewards are of shifted log-ratios: no accuracy to read from them.
        reward_accuracy=accuracies[-1] if accuracies and settings.algorithm != "sppo" else None,
        num_pairs=len(records),
    )


# --------------------------------------------------------------------------- data


def _validated_pairs(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fail before any model is loaded: a bad pair found mid-tokenisation wastes minutes."""
    records: list[dict[str, Any]] = []
    for index, pair in enumerate(pairs):
        record: dict[str, Any] = {}
        for key in ("prompt", "chosen", "rejected"):
            value = pair.get(key) if isinstance(pair, Mapping) else None
            if not isinstance(value, str):
                raise ValueError(f"preference pair {index} needs a string {key!r}, got {value!r}")
            record[key] = value
        for key in PROBABILITY_KEYS:
            prob = pair.get(key) if isinstance(pair, Mapping) else None
            if prob is None:
                continue
            if (
                not isinstance(prob, int | float)
                or isinstance(prob, bool)
                or not 0.0 <= float(prob) <= 1.0
            ):
                raise ValueError(
                    f"preference pair {index}: {key!r} must be a probability in [0, 1], "
                    f"got {prob!r}"
                )
            record[key] = float(prob)
        system = pair.get("system") if isinstance(pair, Mapping) else None
        if system is not None and not isinstance(system, str):
            raise ValueError(f"preference pair {index}: 'system' must be a string, got {system!r}")
        if system:
            record["system"] = system
        records.append(record)
    if not records:
        raise ValueError("train_policy needs at least one preference pair; got an empty list")
    return records


def _check_start_folder(model_path: str) -> None:
    """Fail in the caller's process, not after workers were launched and models loaded."""
    if not (Path(model_path) / "config.json").is_file():
        hint = ""
        if (Path(model_path) / "adapter_config.json").is_file():
            hint = " (it holds an unmerged LoRA adapter: merge it into its base first)"
        raise FileNotFoundError(
            f"model_path {model_path} is not a transformers model folder with config.json{hint}"
        )


def _conversational(record: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """TRL's conversational preference format, so the trainers apply the chat template.

    A ``system`` message, when the pair has one, is the one the responses were sampled
    under: training on the same conversation keeps the policy's log-probabilities those
    of the sampling distribution.
    """
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    conv: dict[str, Any] = {
        "prompt": [*system, {"role": "user", "content": record["prompt"]}],
        "chosen": [{"role": "assistant", "content": record["chosen"]}],
        "rejected": [{"role": "assistant", "content": record["rejected"]}],
    }
    for key in PROBABILITY_KEYS:
        if key in record:
            conv[key] = record[key]
    return conv


def pair_tokens(pairs: Sequence[Mapping[str, str]], model_path: str, max_length: int) -> int:
    """Tokens one epoch over ``pairs`` feeds the policy: prompt + chosen and prompt + rejected,
    each formatted by the chat template and cut at ``max_length``, as the trainers see them.

    It is what runs are compared by when their compute is compared (``eva sweep report``);
    the frozen reference of DPO reads the same tokens again, which the count leaves out.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    total = 0
    for record in _validated_pairs(pairs):
        conv = _conversational(record)
        for side in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(conv["prompt"] + conv[side], tokenize=False)
            ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
            total += min(len(ids), max_length)
    return total


# --------------------------------------------------------------------------- trainer


def _resolve_precision(requested: str) -> str:
    """Concrete precision for this machine; half precision only where a GPU runs it."""
    import torch

    if not torch.cuda.is_available():
        if requested in ("bf16", "fp16"):
            logger.warning("precision %s needs a CUDA GPU, none is visible: using fp32", requested)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return requested


def _load_dtype(settings: TrainSettings, precision: str) -> torch.dtype:
    """dtype of the trainable policy's weights.

    Full fine-tuning keeps fp32 weights under bf16/fp16 autocast: plain AdamW on half
    precision weights rounds away updates as small as eva's learning rates. LoRA (only
    the fp32 adapters train) and ZeRO-3 (DeepSpeed keeps fp32 master weights itself) can
    hold the frozen/compute copy in half precision.
    """
    import torch

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if half is not None and (settings.lora is not None or settings.deepspeed == "zero3"):
        return half
    return torch.float32


def _declared_dtype(model_path: str) -> torch.dtype:
    """dtype the start checkpoint declares; the trained policy is saved in it again."""
    import torch

    config = json.loads((Path(model_path) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _load_causal_lm(model_path: str, dtype: torch.dtype) -> Any:
    """Load a policy or reference from the start folder (one place, so tests can observe it)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)


def _lora_config(lora: LoraSettings | None) -> LoraConfig | None:
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )


def _training_args(
    settings: TrainSettings, *, scratch_dir: str, precision: str, on_gpu: bool
) -> TrainingArguments:
    """The algorithm's TRL config, with every default that misfits eva pinned explicitly.

    TRL configs default to ``bf16=True`` (an error on CPU) and to gradient checkpointing
    on, log every 10 steps, and the base Trainer saves checkpoints; an iteration here
    wants none of that, so those fields are always set.
    """
    common: dict[str, Any] = {
        "output_dir": scratch_dir,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.per_device_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        # transformers 5 folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio.
        "warmup_steps": settings.warmup_ratio,
        "logging_strategy": "steps",
        "logging_steps": settings.logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "push_to_hub": False,
        "disable_tqdm": True,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not on_gpu,
        "beta": settings.beta,
        "max_length": settings.max_length,
        "dataloader_num_workers": 0,
    }
    common[_checkpointing_field()] = settings.gradient_checkpointing and on_gpu
    if settings.algorithm == "rpo":
        from trl import DPOConfig

        # RPO (Pang et al. 2024): the DPO loss plus alpha times the chosen response's
        # negative log-likelihood, which is TRL's sigmoid + sft losses weighted [1, alpha].
        return DPOConfig(
            **common, loss_type=["sigmoid", "sft"], loss_weights=[1.0, settings.rpo_alpha]
        )
    if settings.algorithm == "sppo":
        from trl import DPOConfig

        # Soft SPPO runs as TRL's sppo_hard loss over shifted reference log-probabilities
        # (see _soft_sppo_trainer), which needs them precomputed.
        return DPOConfig(**common, loss_type=["sppo_hard"], precompute_ref_log_probs=True)
    if settings.algorithm in ("dpo", "ipo"):
        from trl import DPOConfig

        loss = settings.loss_type if settings.algorithm == "dpo" else "ipo"
        return DPOConfig(
            **common,
            loss_type=[loss],
            label_smoothing=settings.label_smoothing,
            discopop_tau=settings.discopop_tau,
        )
    if settings.algorithm == "simpo":
        CPOConfig = _experimental("cpo").CPOConfig

        # SimPO is CPO's "simpo" loss without the behaviour-cloning term (cpo_alpha=0).
        cpo: TrainingArguments = CPOConfig(
            **common,
            loss_type="simpo",
            cpo_alpha=0.0,
            simpo_gamma=settings.simpo_gamma,
            remove_unused_columns=False,
        )
        return cpo
    ORPOConfig = _experimental("orpo").ORPOConfig

    # beta is ORPO's odds-ratio weight (lambda in the paper).
    orpo: TrainingArguments = ORPOConfig(**common, remove_unused_columns=False)
    return orpo


def _experimental(name: str) -> Any:
    """SimPO (inside CPO) and ORPO live in ``trl.experimental`` in TRL 1.x.

    Importing it warns that its API may change; that is accepted here (the settings
    above pin the few fields used), so the warning is not repeated on every run.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        return importlib.import_module(f"trl.experimental.{name}")


def _checkpointing_field() -> str:
    """transformers 5.x renamed gradient to activation checkpointing; the old name warns."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    new_name = "activation_checkpointing"
    return new_name if new_name in names else "gradient_checkpointing"


def _build_trainer(
    records: Sequence[Mapping[str, str]],
    *,
    model_path: str,
    settings: TrainSettings,
    scratch_dir: str,
    callbacks: Sequence[TrainerCallback] = (),
    dataset_dir: str | None = None,
) -> Trainer:
    """Assemble the TRL trainer for ``settings.algorithm`` around the start policy."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    on_gpu = torch.cuda.is_available()
    precision = _resolve_precision(settings.precision)
    # Built before any model is loaded: under ZeRO-3 these arguments install the DeepSpeed
    # config that from_pretrained consults to partition weights while loading.
    args = _training_args(settings, scratch_dir=scratch_dir, precision=precision, on_gpu=on_gpu)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer at {model_path} has no chat template to format pairs with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    dtype = _load_dtype(settings, precision)
    policy = _load_causal_lm(model_path, dtype)
    if dataset_dir is not None:
        from datasets import load_from_disk

        dataset = load_from_disk(dataset_dir)
    else:
        dataset = Dataset.from_list([_conversational(r) for r in records])
    peft_config = _lora_config(settings.lora)
    common: dict[str, Any] = {
        "args": args,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "callbacks": list(callbacks),
        "peft_config": peft_config,
    }

    if settings.algorithm in _REFERENCE_FREE:
        if settings.algorithm == "simpo":
            ReferenceFreeTrainer = _experimental("cpo").CPOTrainer
        else:
            ReferenceFreeTrainer = _experimental("orpo").ORPOTrainer
        return _quiet(ReferenceFreeTrainer(model=policy, **common))

    if settings.algorithm == "sppo":
        missing = [i for i, r in enumerate(records) if not all(k in r for k in PROBABILITY_KEYS)]
        if missing:
            raise ValueError(
                f"algorithm sppo: preference pair {missing[0]} has no {PROBABILITY_KEYS} "
                "(the win probabilities SPPO trains towards)"
            )
        # The start policy scores the reference log-probabilities before it is trained
        # (with LoRA: with the adapter disabled), so no second copy is loaded.
        return _quiet(_soft_sppo_trainer()(model=policy, ref_model=None, **common))

    from trl import DPOTrainer

    reference = None
    if peft_config is None:
        # The reference is frozen, so it can live in the compute precision.
        ref_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, dtype)
        reference = _load_causal_lm(model_path, ref_dtype)
        reference.requires_grad_(False)
        reference.eval()
    # With LoRA, TRL scores the reference by disabling the adapter: that is the start policy.
    trainer = DPOTrainer(model=policy, ref_model=reference, **common)
    if peft_config is None and trainer.ref_model is None:
        raise RuntimeError("DPOTrainer dropped the explicit reference model")
    return _quiet(trainer)


_SOFT_SPPO: Any = None


def _soft_sppo_trainer() -> Any:
    """TRL's DPOTrainer with the SPPO objective on soft win probabilities.

    SPPO (Wu et al. 2024) minimises, per pair,
    ``(log pi/pi_ref (y_w) - eta (P_w - 1/2))^2 + (log pi/pi_ref (y_l) - eta (P_l - 1/2))^2``
    with ``eta = 1/beta``; TRL ships the hard case P_w = 1, P_l = 0 (``sppo_hard``). The
    soft case is the hard loss on log-ratios shifted per pair, so it is had by moving the
    precomputed reference log-probabilities: ``ref_w += (P_w - 1)/beta`` and
    ``ref_l += P_l/beta``. Nothing else of TRL's trainer changes. (Its logged
    ``rewards/*`` are then of the shifted log-ratios.)
    """
    global _SOFT_SPPO
    if _SOFT_SPPO is not None:
        return _SOFT_SPPO
    from trl import DPOTrainer

    class SoftSPPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            beta = float(self.beta)

            def shift(batch: dict[str, list[float]]) -> dict[str, list[float]]:
                return {
                    "ref_chosen_logps": [
                        r + (p - 1.0) / beta
                        for r, p in zip(
                            batch["ref_chosen_logps"], batch["chosen_prob"], strict=True
                        )
                    ],
                    "ref_rejected_logps": [
                        r + p / beta
                        for r, p in zip(
                            batch["ref_rejected_logps"], batch["rejected_prob"], strict=True
                        )
                    ],
                }

            return out.map(shift, batched=True, desc=f"SPPO targets for the {name} dataset")

    _SOFT_SPPO = SoftSPPOTrainer
    return _SOFT_SPPO


def _quiet(trainer: Trainer) -> Trainer:
    """Drop the Trainer's print-every-log callback: logs reach callers through ``on_log``."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _log_callback(history: list[dict], on_log: Callable[[dict], None] | None) -> TrainerCallback:
    """Relay trainer logs as plain-float dicts: to ``history`` and to the caller's hook."""
    from transformers import TrainerCallback

    class _LogRelay(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            record: dict[str, float | int] = {"step": int(state.global_step)}
            for key, value in logs.items():
                number = _as_float(value)
                if number is not None:
                    record[key] = number
            # Only per-step records go into history; the end-of-run summary
            # (train_runtime, train_loss, ...) still reaches the caller's hook.
            if "loss" in record:
                history.append(record)
                logger.info("step %d: loss %.4f", record["step"], record["loss"])
            if on_log is not None:
                on_log(dict(record))

    return _LogRelay()


def _as_float(value: Any) -> float | None:
    """Logs mix python numbers, numpy scalars and 0-d tensors; JSON and callers want floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(value, int | float):
        return float(value)
    return None


# --------------------------------------------------------------------------- saving


def _save_policy(
    trainer: Trainer, *, model_path: str, output_dir: str, settings: TrainSettings
) -> None:
    """Write the trained policy to ``output_dir`` via a ``.tmp`` sibling and a rename."""
    final = Path(output_dir).resolve()
    staging = final.with_name(final.name + ".tmp")
    main = trainer.is_world_process_zero()
    lora = settings.lora
    save_dtype = _declared_dtype(model_path)
    if main:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()

    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora is not None:
        # PEFT records whatever name the model object carried; the adapter must point at
        # the folder it was trained on top of.
        model.peft_config["default"].base_model_name_or_path = str(model_path)

    if trainer.is_deepspeed_enabled:
        # ZeRO-3 shards the weights over ranks; Trainer.save_model gathers them (all ranks
        # must take part) and writes from the main rank only.
        merge_later = lora is not None and lora.merge
        raw = final.with_name(final.name + ".adapter.tmp") if merge_later else staging
        trainer.save_model(str(raw))
        if main and merge_later:
            _merge_adapter_folder(model_path, raw, staging, save_dtype)
            shutil.rmtree(raw, ignore_errors=True)
    elif main:
        if lora is not None and lora.merge:
            model = model.merge_and_unload()
        if lora is None or lora.merge:
            model = model.to(save_dtype)
        model.save_pretrained(str(staging))

    if main:
        assert trainer.processing_class is not None  # the tokenizer the trainer was given
        trainer.processing_class.save_pretrained(str(staging))
        _replace_dir(staging, final)
    trainer.accelerator.wait_for_everyone()


def _merge_adapter_folder(model_path: str, adapter_dir: Path, target: Path, dtype: Any) -> None:
    """Merge a saved adapter into a fresh copy of the start weights (the ZeRO-3 path)."""
    from peft import PeftModel

    shutil.rmtree(target, ignore_errors=True)
    base = _load_causal_lm(model_path, dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(target))


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap ``staging`` into ``final`` so readers see either the old or the new folder."""
    if final.exists():
        previous = final.with_name(final.name + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        final.rename(previous)
        staging.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        staging.rename(final)


def _release(trainer: Trainer) -> None:
    """Free the models now: the eva loop goes on to load an inference engine in-process."""
    with contextlib.suppress(AttributeError):
        trainer.accelerator.free_memory()
    for attribute in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler"):
        if hasattr(trainer, attribute):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(trainer, attribute, None)
    free_torch_memory()


# --------------------------------------------------------------------------- launching


def _train_launched(
    records: Sequence[Mapping[str, str]],
    *,
    model_path: str,
    output_dir: str,
    settings: TrainSettings,
    on_log: Callable[[dict], None] | None,
) -> TrainResult:
    """Run training in ``settings.num_processes`` workers under ``accelerate launch``."""
    import torch

    on_gpu = torch.cuda.is_available()
    precision = _resolve_precision(settings.precision)
    if settings.deepspeed == "zero3" and not on_gpu:
        raise ValueError("deepspeed='zero3' needs CUDA GPUs; none is visible")
    visible = torch.cuda.device_count()
    if settings.num_processes > 1 and on_gpu and visible < settings.num_processes:
        raise ValueError(f"num_processes={settings.num_processes} but {visible} GPUs are visible")
    worker_settings = dataclasses.replace(settings, precision=precision)

    with tempfile.TemporaryDirectory(prefix="eva-train-job-") as job_root:
        job = Path(job_root)
        pairs_file = job / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(dict(r)) + "\n" for r in records))
        result_file = job / "result.json"
        job_file = job / "job.json"
        spec: dict[str, Any] = {
            "model_path": str(model_path),
            "output_dir": str(Path(output_dir).resolve()),
            "settings": settings_to_dict(worker_settings),
            "pairs_file": str(pairs_file),
            "result_file": str(result_file),
        }
        if settings.algorithm == "sppo":
            # TRL caches the precomputed reference log-probabilities in a file beside the
            # dataset's, which every rank then reads: an in-memory dataset would put it in
            # each process's own temporary folder. A dataset saved here is one folder for all.
            from datasets import Dataset

            dataset_dir = job / "dataset"
            Dataset.from_list([_conversational(r) for r in records]).save_to_disk(dataset_dir)
            spec["dataset_dir"] = str(dataset_dir)
        job_file.write_text(json.dumps(spec))
        config_file = job / "accelerate_config.json"
        config_file.write_text(json.dumps(_accelerate_config(worker_settings, precision)))
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config_file),
            "--num_processes",
            str(settings.num_processes),
            "--num_machines",
            "1",
            "--main_process_port",
            "0",
            "--mixed_precision",
            _accelerate_precision(precision),
            "--module",
            "eva_runtime.solver.train_worker",
            str(job_file),
        ]
        _run_streaming(command, _launch_env(settings.num_processes, on_gpu), on_log)
        if not result_file.exists():
            raise RuntimeError("training workers exited cleanly but wrote no result file")
        return TrainResult(**json.loads(result_file.read_text()))


def _accelerate_precision(precision: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")


def _accelerate_config(settings: TrainSettings, precision: str) -> dict[str, Any]:
    """A launch config of our own, so a user's default accelerate config cannot leak in.

    Plain data parallelism is declared as MULTI_GPU even on CPU: that selects accelerate's
    torchrun launcher, which actually starts N processes (its CPU launcher starts one
    unless driven by mpirun). The workers then ask for the CPU (``use_cpu``), which makes
    accelerate form a gloo process group.
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": _accelerate_precision(precision),
        "num_machines": 1,
        "num_processes": settings.num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if settings.deepspeed == "zero3":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_multinode_launcher": "standard",
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": True,
            # Without it, saving under ZeRO-3 writes empty shards instead of the weights.
            "zero3_save_16bit_model": True,
            "zero_stage": 3,
        }
    return config


def _launch_env(num_processes: int, on_gpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not on_gpu and "OMP_NUM_THREADS" not in env:
        # N processes each spawning a thread per core oversubscribe the CPU badly.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def _run_streaming(
    command: list[str], env: dict[str, str], on_log: Callable[[dict], None] | None
) -> None:
    """Run the launcher, relaying worker log records live; raise with its stderr tail."""
    logger.info("launching: %s", " ".join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
        # Own process group, so a failure here can stop the launcher and all its workers.
        start_new_session=True,
    )
    stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    reader = threading.Thread(
        target=_drain, args=(process.stderr, stderr_tail), name="eva-train-stderr", daemon=True
    )
    reader.start()
    try:
        assert process.stdout is not None
        for line in _lines(process.stdout):
            if line.startswith(LOG_MARKER):
                record = json.loads(line[len(LOG_MARKER) :])
                if on_log is not None:
                    on_log(record)
            else:
                logger.info("[train] %s", line)
        returncode = process.wait()
    except BaseException:
        _stop_group(process)
        raise
    finally:
        reader.join(timeout=10)
    if returncode != 0:
        tail = "\n".join(stderr_tail)
        raise RuntimeError(f"distributed training failed with exit code {returncode}:\n{tail}")


def _lines(stream: Any) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")


def _drain(stream: Any, tail: deque[str]) -> None:
    for line in _lines(stream):
        tail.append(line)
        logger.info("[train] %s", line)


def _stop_group(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
