"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base_url, model name) of ``transformers serve`` running a tiny model; stopped after."""
    from tiny_model import build_tiny_model
    from transformers_serve import serving

    folder = build_tiny_model(tmp_path_factory.mktemp("served") / "tiny")
    with serving(folder) as base_url:
        yield base_url, str(folder)
