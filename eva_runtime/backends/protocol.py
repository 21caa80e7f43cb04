"""What every generation backend is: the ``Generator`` protocol and the data it speaks.

Its own module so that the backends (``openai_generator``, ``vllm_generator``) and the
factory that builds them (``generation``) depend on it, not on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "BackendError",
    "Completion",
    "Generator",
    "ProgressCallback",
    "Prompt",
    "SamplingParams",
]

ProgressCallback = Callable[[int], None]
# One request: a user message, or a conversation of {"role", "content"} ending with the user.
Prompt = str | Sequence[dict[str, str]]


class BackendError(RuntimeError):
    """A backend could not do its work for a reason outside the caller's data (server down...)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; ``temperature == 0`` means greedy decoding on every backend."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    """One sampled response. ``finish_reason`` is "length" when cut at max_new_tokens."""

    text: str
    finish_reason: str
    num_tokens: int


@runtime_checkable
class Generator(Protocol):
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        system: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (message or conversation), in order.

        ``on_progress(k)`` is called with the number of prompts finished since the previous
        call (an increment, as progress bars take it).
        """
        ...

    def close(self) -> None: ...
