"""Hand-computed numbers for every informativeness metric and sampler, and the degenerate cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from eva_runtime.creator import informativeness, normalised_weights, sample_prompts, sample_size

R = [[1.0, 3.0, 2.0], [0.0, 0.0, 4.0], [5.0, 5.0, 5.0]]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("gap", [2.0, 4.0, 0.0]),
        ("maxmean", [1.0, 8.0 / 3.0, 0.0]),
        ("mean", [2.0, 4.0 / 3.0, 5.0]),
        ("variance", [2.0 / 3.0, 32.0 / 9.0, 0.0]),
        ("dts", [1.0, 4.0, 0.0]),
        ("gapInverse", [-2.0, -4.0, 0.0]),
        ("meanInverse", [-2.0, -4.0 / 3.0, -5.0]),
        ("uniform", [0.0, 0.0, 0.0]),
    ],
)
def test_metric_values_match_hand_computation(metric: str, expected: list[float]) -> None:
    np.testing.assert_allclose(informativeness(R, metric), expected, rtol=0, atol=1e-12)


def test_unknown_metric_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'gapp'"):
        informativeness(R, "gapp")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rewards_are_refused_with_the_prompt_id(bad: float) -> None:
    with pytest.raises(ValueError, match=r"prompt 'p-7', response 1"):
        informativeness([[1.0, 2.0], [0.5, bad]], ids=["p-3", "p-7"])


def test_single_response_gives_zero_gap_and_dts() -> None:
    r = [[0.3], [0.9]]
    assert informativeness(r, "gap").tolist() == [0.0, 0.0]
    assert informativeness(r, "dts").tolist() == [0.0, 0.0]


def test_weights_are_min_max_normalised_over_their_sum() -> None:
    np.testing.assert_allclose(normalised_weights(np.array([2.0, 4.0, 0.0])), [1 / 3, 2 / 3, 0.0])


def test_all_equal_scores_give_uniform_weights_not_nan() -> None:
    w = normalised_weights(np.array([0.7, 0.7, 0.7, 0.7]))
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, 0.25)


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [(10, 0.25, 3), (4, 0.25, 1), (1, 0.25, 1), (0, 0.5, 0), (8, 1.0, 8), (3, 0.5, 2)],
)
def test_sample_size_rounds_half_up_and_keeps_at_least_one(n: int, fraction: float, k: int) -> None:
    assert sample_size(n, fraction) == k


def test_greedy_takes_top_k_and_breaks_ties_by_row() -> None:
    assert sample_prompts([0.1, 0.5, 0.5, 0.2], 0.5, "greedy").tolist() == [1, 2]
    assert sample_prompts([1.0, 1.0, 1.0, 0.0], 0.5, "greedy").tolist() == [0, 1]


def test_importance_weighted_never_takes_weight_zero_when_enough_others() -> None:
    # scores [2, 4, 0] -> weights [1/3, 2/3, 0]; k = 2 must be exactly the two positive ones.
    for seed in range(50):
        assert sample_prompts([2.0, 4.0, 0.0], 2 / 3, seed=seed).tolist() == [0, 1]


def test_importance_weighted_draws_without_replacement_with_the_right_probabilities() -> None:
    # weights [0, 1/6, 2/6, 3/6], k = 2: P({2,3}) = 7/12, P({1,3}) = 4/15, P({1,2}) = 3/20.
    trials = 6000
    seen = Counter(
        tuple(sample_prompts([0.0, 1.0, 2.0, 3.0], 0.5, seed=s).tolist()) for s in range(trials)
    )
    expected = {(2, 3): 7 / 12, (1, 3): 4 / 15, (1, 2): 3 / 20}
    assert set(seen) == set(expected)
    for pair, p in expected.items():
        sd = math.sqrt(trials * p * (1 - p))
        assert abs(seen[pair] - trials * p) < 4 * sd, (pair, seen[pair], trials * p)


def test_fewer_positive_weights_than_k_takes_them_all_then_fills_uniformly() -> None:
    fills = Counter()
    for seed in range(300):
        got = sample_prompts([0.0, 0.0, 0.0, 1.0], 0.5, seed=seed).tolist()
        assert len(got) == 2 and 3 in got
        fills[next(i for i in got if i != 3)] += 1
    assert set(fills) == {0, 1, 2}


def test_all_equal_rewards_sample_uniformly() -> None:
    scores = informativeness([[0.5, 0.5]] * 4)  # every gap 0
    trials = 4000
    counts = Counter(int(sample_prompts(scores, 0.25, seed=s)[0]) for s in range(trials))
    sd = math.sqrt(trials * 0.25 * 0.75)
    assert all(abs(counts[i] - trials / 4) < 4 * sd for i in range(4)), counts


def test_one_prompt_is_always_kept() -> None:
    for method in ("importanceWeighted", "greedy", "stratified"):
        assert sample_prompts(informativeness([[1.0, 2.0]]), 0.25, method).tolist() == [0]


def test_no_prompts_give_an_empty_sample() -> None:
    assert sample_prompts(np.zeros(0), 0.25).size == 0


def test_stratified_takes_one_per_decile_when_k_equals_bins() -> None:
    for seed in range(20):
        got = sample_prompts(np.arange(20.0), 0.5, "stratified", seed=seed).tolist()
        assert len(got) == 10
        assert sorted(i // 2 for i in got) == list(range(10))


def test_stratified_uneven_bins_follow_largest_remainder() -> None:
    # 25 prompts -> bins of 3,3,3,3,3,2,2,2,2,2; k = 5 -> quotas 0.6 x5, 0.4 x5 -> one from
    # each of the five bins of three, i.e. from the 15 lowest scores, one per bin.
    got = sample_prompts(np.arange(25.0), 0.2, "stratified", seed=3).tolist()
    assert sorted(i // 3 for i in got) == [0, 1, 2, 3, 4]


def test_sampling_is_reproducible_for_a_seed_and_changes_with_it() -> None:
    s = np.random.default_rng(0).random(1000)
    a = sample_prompts(s, 0.25, seed=7)
    assert np.array_equal(a, sample_prompts(s, 0.25, seed=7))
    assert not np.array_equal(a, sample_prompts(s, 0.25, seed=8))


def test_unknown_sampler_and_bad_fraction_are_refused() -> None:
    with pytest.raises(ValueError, match="topk"):
        sample_prompts([1.0], 0.5, "topk")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sample_prompts([1.0], 0.0)
