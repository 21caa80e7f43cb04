"""Built-in rule-based rewards for ``rewardModel.type: python`` (and a pairwise one).

They cost nothing to compute, which matters on a CPU: the CPU demo uses
``length_target`` so that both cores go to generation and training. A python reward is
any ``module:function`` called as ``function(prompts, responses) -> list[float]``.
"""

from __future__ import annotations

from collections.abc import Sequence

TARGET_CHARS = 200


def length_target(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """-|chars - 200| / 200: 0 for a 200-character answer, lower the further from it.

    A small instruct model rambles until it is cut off; this rewards complete answers of
    a paragraph. It is verifiable (no reward model to game but the rule itself) and a
    135M policy can move it in a few DPO steps, which makes the loop's effect visible.
    """
    del prompts
    return [-abs(len(r.strip()) - TARGET_CHARS) / TARGET_CHARS for r in responses]


def length_preference(
    prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
) -> list[float]:
    """For ``rewardModel.type: pairwise`` with ``preference: python``: P(a beats b) as the
    Bradley-Terry probability of ``length_target``'s difference, sigmoid(8 (r_a - r_b)).

    So an answer 50 characters closer to the 200-character target wins about 88% of the
    time; equal distances are a tie (0.5).
    """
    import math

    a = length_target(prompts, responses_a)
    b = length_target(prompts, responses_b)
    return [1.0 / (1.0 + math.exp(-8.0 * (x - y))) for x, y in zip(a, b, strict=True)]
