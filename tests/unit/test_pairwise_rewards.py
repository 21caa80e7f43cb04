"""Pairwise rewards over plain data: the win-probability aggregation against hand-computed
matrices, the pairwise reward with python preferences (grouping, both orders, the cost),
SPPO's win probabilities, and the spec's refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eva_runtime.backends.pairwise import (
    PairwiseReward,
    PythonPreference,
    checked_probabilities,
    fit_lengths,
    symmetric,
    win_scores,
)
from eva_runtime.rewards import length_preference, length_target
from eva_runtime.solver.pairs import preference_pairs, win_probabilities
from eva_runtime.spec import SpecError, parse_run


def test_win_scores_of_hand_computed_matrices() -> None:
    # A beats B and C for sure, B beats C for sure: Borda scores 1, 1/2, 0.
    transitive = [[0.5, 1, 1], [0, 0.5, 1], [0, 0, 0.5]]
    assert win_scores(transitive).tolist() == [1.0, 0.5, 0.0]
    # A rock-paper-scissors cycle: everyone wins one and loses one.
    cycle = [[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]]
    assert win_scores(cycle).tolist() == [0.5, 0.5, 0.5]
    # All ties: no response stands out, the gap is 0.
    assert win_scores(np.full((4, 4), 0.5)).tolist() == [0.5] * 4
    # Soft probabilities: A beats B with 0.8 and C with 0.6; B beats C with 0.3.
    soft = [[0.5, 0.8, 0.6], [0.2, 0.5, 0.3], [0.4, 0.7, 0.5]]
    assert np.allclose(win_scores(soft), [0.7, 0.25, 0.55])
    # The diagonal does not count, whatever it holds.
    assert win_scores([[9.0, 0.25], [0.75, -3.0]]).tolist() == [0.25, 0.75]
    assert win_scores([[0.5]]).tolist() == [0.5]
    assert win_scores(np.zeros((0, 0))).size == 0


def test_win_scores_refuse_what_is_not_a_probability_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        win_scores([[0.5, 0.5]])
    with pytest.raises(ValueError, match="within"):
        win_scores([[0.5, 1.5], [0.0, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        win_scores([[0.5, math.nan], [0.5, 0.5]])


def biased_to_a(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    """A judge with pure position bias: whatever sits first wins."""
    return [0.9] * len(prompts)


def test_both_orders_cancel_position_bias() -> None:
    reward = PairwiseReward(PythonPreference(f"{__name__}:biased_to_a"), both_orders=True)
    assert reward.score(["p"] * 3, ["x", "yy", "zzz"]) == pytest.approx([0.5, 0.5, 0.5])
    one_way = PairwiseReward(PythonPreference(f"{__name__}:biased_to_a"), both_orders=False)
    scores = one_way.score(["p"] * 3, ["x", "yy", "zzz"])
    assert scores != [0.5, 0.5, 0.5]  # the order the pairs are asked in decides
    assert symmetric(0.9, 0.9) == 0.5 and symmetric(0.8, 0.4) == pytest.approx(0.7)


def test_rows_group_by_prompt_wherever_they_sit_and_cost_is_counted() -> None:
    target = "x" * 200
    prompts = ["p1", "p2", "p1", "p2", "p1", "p3"]
    responses = [target, "y" * 10, "x" * 100, target, "x" * 20, "lonely"]
    reward = PairwiseReward(PythonPreference("eva_runtime.rewards:length_preference"))
    scores, rows = reward.score_with_matrix(prompts, responses)
    # p1: the 200-char answer beats both others, 100 chars beats 20 chars.
    assert scores[0] > scores[2] > scores[4]
    assert scores[3] > scores[1]
    assert scores[5] == 0.5  # a prompt with one response
    # Against hand-computed probabilities: sigmoid(8 (r_a - r_b)) from length_target.
    r = length_target([], [responses[0], responses[2], responses[4]])
    p01 = 1 / (1 + math.exp(-8 * (r[0] - r[1])))
    p02 = 1 / (1 + math.exp(-8 * (r[0] - r[2])))
    assert scores[0] == pytest.approx((p01 + p02) / 2)
    assert rows[0] == pytest.approx([0.5, p01, p02])
    assert rows[2][0] == pytest.approx(1 - p01)
    # n(n-1)/2 pairs per prompt, each asked in both orders: (3 + 1 + 0) * 2.
    assert reward.comparisons == 8
    # P(a beats b) + P(b beats a) = 1 for a consistent preference like this one.
    ab = length_preference([""], ["x" * 150], ["x" * 300])
    ba = length_preference([""], ["x" * 300], ["x" * 150])
    assert ab[0] + ba[0] == pytest.approx(1.0) and ab[0] > 0.5


def test_the_scores_feed_pair_building_like_pointwise_rewards() -> None:
    reward = PairwiseReward(PythonPreference("eva_runtime.rewards:length_preference"))
    responses = ["x" * 50, "x" * 200, "x" * 400, "x" * 190]
    scores = np.array(reward.score(["p"] * 4, responses)).reshape(1, 4)
    pairs = preference_pairs(scores)
    assert (int(pairs.chosen[0]), int(pairs.rejected[0])) == (1, 2)


def wrong_count(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    return [0.5]


def out_of_range(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    return [1.5] * len(prompts)


def test_a_bad_preference_function_is_named_with_the_index() -> None:
    with pytest.raises(ValueError, match="1 probabilities for 3 pairs"):
        PairwiseReward(PythonPreference(f"{__name__}:wrong_count")).score(
            ["p"] * 3, ["a", "b", "c"]
        )
    with pytest.raises(ValueError, match=r"1\.5 at index 0.*\[0, 1\]"):
        PairwiseReward(PythonPreference(f"{__name__}:out_of_range")).score(["p"] * 2, ["a", "b"])
    with pytest.raises(ValueError, match="True at index 1"):
        checked_probabilities([0.5, True], 2, "f")
    with pytest.raises(ValueError, match="expected a list"):
        checked_probabilities("0.5", 1, "f")
    with pytest.raises(ValueError, match="has no attribute"):
        PythonPreference("eva_runtime.rewards:nope")


def test_fit_lengths_keeps_both_candidates() -> None:
    assert fit_lengths((5, 5, 5), 20) == (5, 5, 5)
    assert fit_lengths((100, 10, 10), 40) == (20, 10, 10)  # the prompt gives way first
    p, a, b = fit_lengths((100, 100, 100), 40)
    assert p == 10 and a + b == 30 and min(a, b) >= 15
    assert fit_lengths((0, 5, 100), 40) == (0, 5, 35)  # a short candidate leaves its slack


def test_sppo_win_probabilities() -> None:
    # Pointwise: Bradley-Terry on the reward difference, averaged over the other samples.
    r = np.array([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    p = win_probabilities(r, pairwise=False)
    s = 1 / (1 + math.exp(-1.0))
    assert p[0].tolist() == pytest.approx([s, (1 - s + 0.5) / 2, (1 - s + 0.5) / 2])
    assert p[1].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert win_probabilities(np.array([[3.0]]), pairwise=False).tolist() == [[0.5]]
    # Huge rewards do not overflow.
    assert win_probabilities(np.array([[1e6, -1e6]]), pairwise=False).tolist() == [[1.0, 0.0]]
    # Pairwise: the mean win probability is the estimate itself.
    assert win_probabilities(np.array([[0.7, 0.3]]), pairwise=True).tolist() == [[0.7, 0.3]]


def _manifest(reward: dict, solver: dict | None = None) -> dict:
    spec = {
        "policy": {"model": "org/model"},
        "prompts": {"source": "p.jsonl"},
        "rewardModel": reward,
    }
    if solver:
        spec["solver"] = solver
    return {"apiVersion": "eva.dev/v1alpha1", "kind": "EvaRun", "metadata": {"name": "r"},
            "spec": spec}  # fmt: skip


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"type": "pairwise"}, "model: required when type is pairwise with preference ranker"),
        ({"type": "pairwise", "preference": "judge"}, "or set judgeEndpoint"),
        ({"type": "pairwise", "preference": "python"}, "function: required"),
        ({"type": "pairwise", "preference": "python", "function": "nope"}, "module:function"),
        ({"type": "pairwise", "preference": "oracle", "model": "m"}, "preference"),
        ({"type": "classifier", "model": "m", "preference": "judge"}, "only type pairwise"),
        ({"type": "classifier", "model": "m", "bothOrders": False}, "bothOrders: only"),
    ],
)
def test_pairwise_specs_that_cannot_work_are_refused(reward: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_run(_manifest(reward))
    assert "rewardModel" in str(info.value)


def test_pairwise_and_sppo_specs_that_work() -> None:
    for reward in (
        {"type": "pairwise", "model": "llm-blender/PairRM"},
        {"type": "pairwise", "preference": "judge", "model": "org/judge"},
        {"type": "pairwise", "preference": "judge",
         "judgeEndpoint": {"baseUrl": "http://judge:8000/v1", "model": "j"}},
        {"type": "pairwise", "preference": "python",
         "function": "eva_runtime.rewards:length_preference", "bothOrders": False},
    ):  # fmt: skip
        run = parse_run(_manifest(reward, {"algorithm": "sppo"}))
        assert run.spec.reward_model.type == "pairwise"
    # sppo with a pointwise reward: probabilities from a Bradley-Terry transform.
    assert (
        parse_run(_manifest({"model": "rm"}, {"algorithm": "sppo"})).spec.solver.algorithm == "sppo"
    )
    with pytest.raises(SpecError, match="lossType: hinge is a loss of algorithm dpo"):
        parse_run(_manifest({"model": "rm"}, {"algorithm": "sppo", "lossType": "hinge"}))


def raises(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
    raise KeyError("no such judge")


def test_a_preference_function_that_raises_is_named() -> None:
    with pytest.raises(ValueError, match=r"preference function '.*:raises' raised KeyError"):
        PairwiseReward(PythonPreference(f"{__name__}:raises")).score(["p"] * 2, ["a", "b"])


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"model": "rm", "function": "m:f"}, "function: only type python.*type is classifier"),
        ({"type": "pairwise", "model": "rm", "function": "m:f"}, "preference ranker"),
        ({"model": "rm", "judgeEndpoint": {"baseUrl": "http://j:1/v1", "model": "j"}},
         "judgeEndpoint: only type judge"),
        ({"type": "python", "function": "m:f",
          "judgeEndpoint": {"baseUrl": "http://j:1/v1", "model": "j"}}, "type is python"),
    ],
)  # fmt: skip
def test_a_reward_field_nothing_reads_is_refused(reward: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_run(_manifest(reward))
