"""Which prompts the creator keeps for evolving.

All samplers take one score per prompt and return sorted row indices. Weights for the
importance-weighted sampler are the min-max normalised scores over their sum, as in the
reference code, so the least informative prompt has weight 0. The degenerate cases the
reference code crashes on have defined results here:

* all scores equal (one prompt, one response per prompt, all-equal rewards, the uniform
  metric): every prompt gets the same weight, i.e. uniform sampling;
* fewer prompts with non-zero weight than the sample size k: all of them are taken and the
  rest of the k is drawn uniformly from the zero-weight prompts, so the sample always has
  k = max(1, round(fraction * prompts)) members (0 when there are no prompts).
"""

from __future__ import annotations

import math

import numpy as np

from eva_runtime.spec import Sampling

METHODS: tuple[str, ...] = tuple(m.value for m in Sampling)
STRATA = 10


def sample_size(num_prompts: int, fraction: float) -> int:
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if num_prompts <= 0:
        return 0
    return min(num_prompts, max(1, math.floor(fraction * num_prompts + 0.5)))


def normalised_weights(scores: np.ndarray) -> np.ndarray:
    """Min-max normalised scores over their sum; uniform when all scores are equal."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    lo, hi = s.min(), s.max()
    span = hi - lo
    if not np.isfinite(span) or span <= 0.0:
        return np.full(s.shape, 1.0 / s.size)
    w = (s - lo) / span
    return np.asarray(w / w.sum(), dtype=float)


def _importance_weighted(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # Weighted sampling without replacement by exponential keys (Efraimidis-Spirakis):
    # item i gets key E_i / w_i with E_i ~ Exp(1); the k smallest keys are a sample drawn
    # successively with probability proportional to weight. O(n), unlike rng.choice.
    w = normalised_weights(scores)
    n = w.size
    with np.errstate(divide="ignore"):
        keys = rng.standard_exponential(n) / w  # weight 0 -> inf: drawn only if needed
    positive = int(np.count_nonzero(w))
    if positive < k:
        # Too few prompts with weight: take them all, fill uniformly from the rest.
        zero = np.flatnonzero(w == 0)
        extra = rng.choice(zero, size=k - positive, replace=False)
        return np.sort(np.concatenate([np.flatnonzero(w > 0), extra]))
    if k == n:
        return np.arange(n)
    return np.sort(np.argpartition(keys, k - 1)[:k])


def _greedy(scores: np.ndarray, k: int) -> np.ndarray:
    # Top-k; ties at the threshold go to the lower row index, so the result is exact.
    n = scores.size
    if k == n:
        return np.arange(n)
    threshold = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > threshold)
    at = np.flatnonzero(scores == threshold)[: k - above.size]
    return np.sort(np.concatenate([above, at]))


def _stratified(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # Split prompts by score rank into STRATA bins of near-equal size, give each bin a share
    # of k proportional to its size (largest remainder, ties to the higher-score bin), and
    # draw uniformly inside each bin.
    order = np.argsort(scores, kind="stable")
    bins = [b for b in np.array_split(order, min(STRATA, scores.size)) if b.size]
    sizes = np.array([b.size for b in bins], dtype=np.float64)
    quota = sizes * k / sizes.sum()
    take = np.floor(quota).astype(int)
    remainder = quota - take
    rank = sorted(range(len(bins)), key=lambda i: (-remainder[i], -i))
    for i in rank[: k - int(take.sum())]:
        take[i] += 1
    chosen = [rng.choice(b, size=t, replace=False) for b, t in zip(bins, take, strict=True) if t]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def sample_prompts(
    scores: object,
    fraction: float = 0.25,
    method: str = "importanceWeighted",
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of the prompts kept for evolving.

    importanceWeighted: without replacement, probability proportional to min-max normalised
    score; greedy: the top k scores; stratified: k spread over 10 score-quantile bins.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; one of {', '.join(METHODS)}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        row = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"informativeness score at row {row} is {s[row]!r}: must be finite")
    k = sample_size(s.size, fraction)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if method == "greedy":
        return _greedy(s, k)
    if method == "stratified":
        return _stratified(s, k, rng)
    return _importance_weighted(s, k, rng)
