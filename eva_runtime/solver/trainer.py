"""One training in this process: the TRL trainer built for the algorithm, run, and its
policy saved atomically (every launched worker runs this too)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eva_runtime.backends._common import free_torch_memory
from eva_runtime.solver.data import PROBABILITY_KEYS, _conversational, _validated_pairs
from eva_runtime.solver.settings import LoraSettings, TrainResult, TrainSettings
from eva_runtime.timing import timed

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import Trainer, TrainerCallback, TrainingArguments


logger = logging.getLogger(__name__)
_REFERENCE_FREE = frozenset({"simpo", "orpo"})
_ONE_TRAINING = threading.Lock()


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
