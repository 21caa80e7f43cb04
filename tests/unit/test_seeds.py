"""Golden values of the run's seeds: every sample a run draws depends on these numbers.

A failure here means every run's prompts, samples and training order change; if that is
intended, update the values and re-measure the README's demo figures in the same change.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from eva_runtime.seeds import derive_seed

ROOT = Path(__file__).resolve().parents[2]

# (seed, *where) -> derived seed, for the places a run draws from.
GOLDEN = [
    ((0, "heldout"), 335629557),
    ((42, "heldout"), 1333547130),
    ((42, 0, "create"), 787327118),
    ((42, 1, "buffer"), 1392149639),
    ((42, 1, "evolve"), 559632098),
    ((42, 0, "generate", 0), 1712559045),
    ((42, 1, "generate-evolved", 3), 73954189),
    ((42, 2, "train"), 388310682),
    ((42, "evaluate"), 478521959),
    ((42, "benchmark", "arena-hard"), 425986815),
    # a backend's per-batch / per-request seeds, derived from the step's seed
    ((123456789, 0), 1287789322),
    ((123456789, 17), 934487242),
    ((123456789, 17, 1), 1022242972),
]


@pytest.mark.parametrize(("where", "expected"), GOLDEN, ids=lambda v: str(v))
def test_derived_seeds_are_pinned(where, expected):
    assert derive_seed(*where) == expected


def test_derived_seeds_fit_31_bits_and_differ_by_place():
    seeds = {derive_seed(7, t, step) for t in range(20) for step in ("create", "buffer", "train")}
    assert len(seeds) == 60
    assert all(0 <= s < 2**31 for s in seeds)


def test_the_streams_a_run_draws_are_pinned():
    # the held-out split and the creator's buffer draw from numpy's PCG64 with these seeds
    split = np.random.default_rng(derive_seed(42, "heldout")).permutation(12).tolist()
    assert split == [8, 11, 10, 2, 6, 7, 5, 9, 3, 4, 1, 0]
    draws = np.random.default_rng(derive_seed(42, 1, "buffer")).random(3)
    np.testing.assert_allclose(
        draws, [0.6051548992666504, 0.016776665000399427, 0.3039057600513556]
    )


def test_derive_seed_has_one_definition():
    defs = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for base in ("eva_runtime", "operator/eva_operator")
        for path in sorted((ROOT / base).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        and "seed" in node.name
        and node.name.startswith("derive")
    ]
    assert len(defs) == 1, defs
    assert defs[0].startswith("eva_runtime/seeds.py:"), defs
