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
that the orchestration code can import this module on machines that only coordinate and
never train. The parts: ``settings`` (TrainSettings, LoraSettings, TrainResult; plain data),
``data`` (the pairs), ``trainer`` (one training in this process), ``launch`` (several
processes under ``accelerate launch``); this module is the entry point and the public API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from eva_runtime.solver.data import (
    PROBABILITY_KEYS,
    _check_start_folder,
    _validated_pairs,
    pair_tokens,
)
from eva_runtime.solver.launch import LOG_MARKER, _train_launched
from eva_runtime.solver.settings import (
    LoraSettings,
    TrainResult,
    TrainSettings,
    settings_from_dict,
    settings_to_dict,
)
from eva_runtime.solver.trainer import train_in_this_process
from eva_runtime.timing import timed

__all__ = [
    "LOG_MARKER",
    "PROBABILITY_KEYS",
    "LoraSettings",
    "TrainResult",
    "TrainSettings",
    "pair_tokens",
    "settings_from_dict",
    "settings_to_dict",
    "train_in_this_process",
    "train_policy",
]


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
