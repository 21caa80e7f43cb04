from __future__ import annotations

import numpy as np
import pytest

from eva_runtime.solver import preference_pairs

R = [[1.0, 3.0, 2.0], [0.0, 0.0, 4.0], [5.0, 5.0, 5.0]]


def test_best_against_worst_and_ties_dropped() -> None:
    p = preference_pairs(R)
    assert p.prompt.tolist() == [0, 1]
    assert p.chosen.tolist() == [1, 2]
    assert p.rejected.tolist() == [0, 0]
    assert p.margin.tolist() == [2.0, 4.0]
    assert (p.tied, p.too_few) == (1, 0)


def test_masked_responses_are_never_used() -> None:
    valid = [[True, False, True], [True, True, False], [True, True, True]]
    p = preference_pairs(R, valid)
    # row 0: col 1 masked -> best is col 2 (2.0); row 1: only zeros left -> tie, dropped.
    assert p.prompt.tolist() == [0]
    assert (p.chosen[0], p.rejected[0]) == (2, 0)
    assert p.tied == 2


def test_prompts_with_fewer_than_two_usable_responses_are_counted() -> None:
    p = preference_pairs([[1.0, 2.0]], [[True, False]])
    assert len(p) == 0 and p.too_few == 1


def test_pairs_never_tie_on_random_integer_rewards() -> None:
    rng = np.random.default_rng(0)
    r = rng.integers(0, 3, size=(5000, 4)).astype(float)
    p = preference_pairs(r)
    rows = p.prompt
    assert (r[rows, p.chosen] > r[rows, p.rejected]).all()
    assert (p.chosen != p.rejected).all()
    assert len(p) + p.tied == 5000
    assert p.tied == int((r.max(axis=1) == r.min(axis=1)).sum())


def test_nan_rewards_are_refused() -> None:
    with pytest.raises(ValueError, match="row 1"):
        preference_pairs([[1.0, 2.0], [np.nan, 1.0]])
