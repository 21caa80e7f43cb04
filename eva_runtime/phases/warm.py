"""Warm models for ``eva run``: a model loaded by one step is kept for the next that needs it.

Within an iteration the policy's generator serves generate, create's self-play evolver and
generate-evolved, and the reward model serves both scoring steps; both are released before
training, and the new policy, loaded once by evaluate, goes on into the next iteration's
generate. A step still loads whatever it needs when nothing is warm, so every step stays
resumable alone (``eva phase`` keeps nothing warm); this only saves loads.

Sharing is safe for the outputs because the generators are seeded per call from the
sampling parameters: a warm generator writes the same bytes as a fresh one (a test compares
the digests of a warm and a cold run).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class Shared:
    """A model the cache owns: ``close()`` by a step leaves it loaded for the next one."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        """Kept: the cache closes it on release."""


class WarmModels:
    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Shared:
        """The model under ``key``, loaded by ``load()`` the first time."""
        if key not in self._models:
            self._models[key] = load()
        return Shared(self._models[key])

    def holds(self, key: Hashable) -> bool:
        return key in self._models

    def release(self) -> None:
        """Close every warm model (before training, and at the end of the run)."""
        models, self._models = self._models, {}
        for model in models.values():
            model.close()
