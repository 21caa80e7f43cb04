"""Preference pairs: each prompt's best response against its worst.

A prompt whose best and worst rewards tie carries no preference and is dropped (the
reference code keeps it, training on chosen == rejected); so is a prompt with fewer than
two usable responses (e.g. after dropping truncated ones). The result never pairs a
response with itself and never holds a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairIndex:
    """Rows are prompt rows of the reward matrix; chosen/rejected are response columns."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray
    tied: int
    too_few: int

    def __len__(self) -> int:
        return int(self.prompt.size)


def preference_pairs(rewards: object, valid: object | None = None) -> PairIndex:
    """Pick (argmax, argmin) per prompt from a (prompts, n) reward matrix.

    ``valid`` (same shape, bool) masks responses that may not be used; the first of equal
    maxima / minima wins, so the result is deterministic.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be shaped (prompts, responses), got {r.shape}")
    if not np.isfinite(r).all():
        row = int(np.flatnonzero(~np.isfinite(r).all(axis=1))[0])
        raise ValueError(f"rewards of the prompt at row {row} are not all finite")
    if valid is None:
        hi_src, lo_src = r, r
        usable = np.full(r.shape[0], r.shape[1])
    else:
        v = np.asarray(valid, dtype=bool)
        if v.shape != r.shape:
            raise ValueError(f"valid must have the rewards' shape {r.shape}, got {v.shape}")
        hi_src = np.where(v, r, -np.inf)
        lo_src = np.where(v, r, np.inf)
        usable = v.sum(axis=1)
    chosen = hi_src.argmax(axis=1)
    rejected = lo_src.argmin(axis=1)
    rows = np.arange(r.shape[0])
    best = hi_src[rows, chosen]
    worst = lo_src[rows, rejected]
    enough = usable >= 2
    keep = enough & (best > worst)
    idx = np.flatnonzero(keep)
    return PairIndex(
        prompt=idx,
        chosen=chosen[idx],
        rejected=rejected[idx],
        margin=(best - worst)[idx],
        tied=int(np.count_nonzero(enough & ~keep)),
        too_few=int(np.count_nonzero(~enough)),
    )


def win_probabilities(rewards: object, *, pairwise: bool) -> np.ndarray:
    """Each response's estimated P(it beats the policy), from a (prompts, n) reward matrix.

    A pairwise reward already is that probability (the mean win probability against the
    prompt's other samples). A pointwise reward is turned into one by the Bradley-Terry
    model: P(i beats j) = sigmoid(r_i - r_j), averaged over the other samples j of the
    prompt (so rewards are read as logits, as a Bradley-Terry reward model is trained).
    One sample alone gets 0.5.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be shaped (prompts, responses), got {r.shape}")
    if pairwise:
        return np.clip(r, 0.0, 1.0)
    n = r.shape[1]
    if n < 2:
        return np.full(r.shape, 0.5)
    diff = r[:, :, None] - r[:, None, :]
    p = 0.5 * (1.0 + np.tanh(diff / 2.0))  # sigmoid without overflow
    out: np.ndarray = (p.sum(axis=2) - 0.5) / (n - 1)
    return out
