"""The preference pairs a training reads: validated records, the start folder checked,
the conversational form TRL takes, and their token count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Algorithm sppo: each pair's estimated win probabilities of its two responses.
PROBABILITY_KEYS = ("chosen_prob", "rejected_prob")


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
