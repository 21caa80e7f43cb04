"""Small pieces every backend needs the same way, so that backends agree with each other.

Kept free of heavy imports: torch is only touched inside the functions that need it.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from typing import Any

from eva_runtime.timing import timed

__all__ = [
    "chat_messages",
    "check_finite",
    "free_torch_memory",
    "pick_device",
    "render_exchange",
    "render_prompt",
    "torch_dtype",
]


Conversation = Sequence[dict[str, str]]


def chat_messages(prompt: str | Conversation, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages of one request: a user message, or a whole conversation (a list of
    ``{"role", "content"}`` ending with the user's turn, as a multi-turn benchmark asks)."""
    messages = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    else:
        messages.extend({"role": m["role"], "content": m["content"]} for m in prompt)
    return messages


def _flatten(prompt: str | Conversation, system: str | None) -> str:
    """Plain text of a request for a model without a chat template."""
    body = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    return f"{system}\n\n{body}" if system else body


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: Any, prompt: str | Conversation, system: str | None = None
) -> tuple[str, bool]:
    """The text a chat model should continue, and whether a chat template produced it.

    A template already contains the special tokens it wants, so the caller must then
    tokenise with ``add_special_tokens=False``; plain text (a base model without a template)
    needs the tokenizer's own BOS and friends. Some templates refuse a system role
    (Gemma's do): the system text is then put in front of the user message instead.
    """
    if not _has_template(tokenizer):
        return _flatten(prompt, system), False
    try:
        text = tokenizer.apply_chat_template(
            chat_messages(prompt, system), tokenize=False, add_generation_prompt=True
        )
    except Exception:
        if not system:
            raise
        messages = chat_messages(prompt)
        messages[0] = {**messages[0], "content": f"{system}\n\n{messages[0]['content']}"}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, True


def render_exchange(tokenizer: Any, prompt: str, response: str) -> tuple[str, bool]:
    """A finished (user, assistant) exchange as a reward model was trained to read it."""
    if not _has_template(tokenizer):
        return f"{prompt}\n\n{response}", False
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False), True


def check_finite(scores: Sequence[float], source: str) -> list[float]:
    """Refuse NaN and infinities: one of them silently poisons every later mean and argmax."""
    out = [float(s) for s in scores]
    for i, value in enumerate(out):
        if not math.isfinite(value):
            raise ValueError(f"{source} produced a non-finite score ({value}) at index {i}")
    return out


def pick_device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_dtype(name: str, device: Any) -> Any:
    """``auto`` means bfloat16 on a GPU (float16 where bf16 is missing) and float32 on CPU.

    Half precision on CPU is slow and numerically poor, and a checkpoint's own dtype is often
    float32 even when the GPU would be happier with bf16, so "auto" decides by device.
    """
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not one of auto, float32, bfloat16, float16")
    return dtype


def right_padded_batches(
    encoded: Sequence[Sequence[int]], pad_id: int | None, batch_size: int
) -> Iterator[tuple[list[int], Any, Any]]:
    """(row indices, input ids, attention mask) batches of token rows, right-padded.

    Rows of similar length go together (less padding); without a pad id every row is its
    own batch, which needs no padding at all.
    """
    import torch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    step = batch_size if pad_id is not None else 1
    for start in range(0, len(order), step):
        index = order[start : start + step]
        width = max(len(encoded[i]) for i in index)
        ids = torch.full((len(index), width), pad_id or 0, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for k, i in enumerate(index):
            ids[k, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
            mask[k, : len(encoded[i])] = 1
        yield index, ids, mask


def free_torch_memory() -> None:
    with timed("unload"):  # a full collection takes a noticeable part of a second
        gc.collect()
        try:
            import torch
        except ImportError:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
