"""How informative each prompt is for the current policy.

eva approximates a prompt's regret by an advantage computed from the rewards of several
responses sampled from the policy: the reference default is the reward gap (best minus
worst). Every metric maps a (prompts, n) reward matrix to one score per prompt; higher
means "sample this prompt more often".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eva_runtime.spec import Informativeness

METRICS: tuple[str, ...] = tuple(m.value for m in Informativeness)


def _as_matrix(rewards: object, ids: Sequence[str] | None) -> np.ndarray:
    arr = np.asarray(rewards, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"rewards must be shaped (prompts, responses), got {arr.shape}")
    if arr.shape[0] and arr.shape[1] == 0:
        raise ValueError("rewards: every prompt needs at least one response")
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        who = f"prompt {ids[row]!r}" if ids is not None else f"prompt at row {row}"
        raise ValueError(
            f"reward of {who}, response {col} is {arr[row, col]!r}: rewards must be finite "
            "(check the reward model's output for this prompt)"
        )
    return arr


def informativeness(
    rewards: object, metric: str = "gap", *, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Score each prompt from its responses' rewards (shape (prompts, n)).

    Metrics:
      gap          max - min (the paper's default: advantage of the best over the worst)
      maxmean      max - mean
      mean         mean reward
      variance     population variance (ddof 0)
      dts          best - second best ("distance to second"); 0 with one response
      gapInverse   -(max - min): prefers prompts the policy already answers evenly
      meanInverse  -mean: prefers prompts with low reward
      uniform      0 for every prompt (sampling then falls back to uniform)

    NaN or infinite rewards are refused with the prompt's id (``ids``) or row.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown informativeness metric {metric!r}; one of {', '.join(METRICS)}")
    r = _as_matrix(rewards, ids)
    if r.shape[0] == 0:
        return np.zeros(0)
    if metric == "uniform":
        return np.zeros(r.shape[0])
    if metric in ("mean", "meanInverse"):
        out = np.asarray(r.mean(axis=1), dtype=float)
        return -out if metric == "meanInverse" else out
    if metric == "variance":
        return np.asarray(r.var(axis=1), dtype=float)
    if metric == "dts":
        if r.shape[1] == 1:
            return np.zeros(r.shape[0])
        top2 = np.partition(r, r.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    hi = r.max(axis=1)
    if metric == "maxmean":
        return np.asarray(hi - r.mean(axis=1), dtype=float)
    gap = np.asarray(hi - r.min(axis=1), dtype=float)
    return -gap if metric == "gapInverse" else gap
