"""The scoring of the three protocols: parsers for judges' replies and the statistics.

Pure functions over plain lists; nothing here talks to a judge.

* Arena-Hard-Auto (Li et al. 2024, github.com/lmarena/arena-hard-auto): each question is
  judged twice, the baseline first (game 1) and second (game 2). A verdict is one of
  ``A>>B A>B A=B B>A B>>A``; a strong verdict counts as three battles, a tie as half a win
  for each side. The score is the Bradley-Terry (logistic) fit with the baseline anchored at
  0, read as the win rate against the baseline, in percent; the interval is the 2.5/97.5
  percentiles of 100 bootstrap rounds over the battles. Style control adds the normalised
  differences of answer length and markdown counts (headers, lists, bold) as covariates and
  reads the win rate at zero style difference.
* MT-Bench (Zheng et al. 2023, FastChat's llm_judge): a 1-10 rating per answer parsed from
  ``[[rating]]``; the score is the mean per turn and overall.
* AlpacaEval (Dubois et al. 2024, github.com/tatsu-lab/alpaca_eval): the judge prefers the
  model's output or the reference (order randomised per instruction); the raw win rate is
  the mean preference (ties 0.5) and the length-controlled one is a logistic model with a
  ``tanh(length difference / its std)`` term, predicted at zero length difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
# The same verdicts as judges also write them.
_SYNONYMS = {"A<<B": "B>>A", "A<B": "B>A", "B<A": "A>B", "B<<A": "A>>B", "B=A": "A=B"}
_VERDICT = re.compile(r"\[\[\s*([AB]\s*(?:>>|<<|>|<|=)\s*[AB])\s*\]\]")
_VERDICT_LOOSE = re.compile(r"\[\s*([AB]\s*(?:>>|<<|>|<|=)\s*[AB])\s*\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_LOOSE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_CHOICE = re.compile(r"\[\[\s*(?:output\s*)?\(?([ab12]|tie)\)?\s*\]\]", re.IGNORECASE)
BOOTSTRAP_ROUNDS = 100
STRONG_WEIGHT = 3


def parse_verdict(text: str | None) -> str | None:
    """The one verdict in a pairwise judge's reply, or None.

    ``[[A>B]]`` first, then ``[A>B]``; synonyms (``[[B<A]]``) are mapped onto the five
    verdicts. A reply that gives two different verdicts is unparseable: which one the judge
    meant would be a guess.
    """
    if not text:
        return None
    for pattern in (_VERDICT, _VERDICT_LOOSE):
        found = {_normal(m) for m in pattern.findall(text)}
        found.discard(None)
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return None


def _normal(raw: str) -> str | None:
    v = re.sub(r"\s+", "", raw)
    if v[0] == v[-1]:
        return None  # "A>A"
    v = _SYNONYMS.get(v, v)
    return v if v in VERDICTS else None


def parse_mt_rating(text: str | None) -> float | None:
    """MT-Bench's ``[[rating]]`` (``[rating]`` as a fallback), 1..10, or None."""
    if not text:
        return None
    for pattern in (_RATING, _RATING_LOOSE):
        values = {float(v) for v in pattern.findall(text)}
        if len(values) == 1:
            value = values.pop()
            return value if 1 <= value <= 10 else None
        if len(values) > 1:
            return None
    return None


def parse_choice(text: str | None) -> str | None:
    """An AlpacaEval-style preference: ``"a"``, ``"b"`` or ``"tie"`` (``[[a]]``), or None."""
    if not text:
        return None
    found = {m.lower() for m in _CHOICE.findall(text)}
    found = {{"1": "a", "2": "b"}.get(f, f) for f in found}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------- logistic fits


# Ridge on the covariates (style, length) of the fits below; the intercept (the score) is
# left free. A Gaussian prior of this strength keeps a covariate that happens to separate a
# small sample from running off to infinity, and is negligible over hundreds of battles.
COVARIATE_L2 = 1.0


def fit_logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *, l2: np.ndarray | float = 1e-8
) -> np.ndarray:
    """Weighted logistic regression (targets may be fractional) by Newton's method.

    ``l2`` is a ridge per coefficient (or one for all); a tiny one keeps a perfectly
    separated fit finite; callers that need the exact limit of all wins or all losses
    handle it before fitting.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
    ridge = np.broadcast_to(np.asarray(l2, dtype=float), (x.shape[1],))
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (w * (y - p)) - ridge * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def _ridge(k: int) -> np.ndarray:
    return np.array([1e-8] + [COVARIATE_L2] * (k - 1))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, v))))


# --------------------------------------------------------------------------- arena-hard


@dataclass(frozen=True)
class Battle:
    """One judged game from the model's side: ``y`` 1 won, 0.5 tie, 0 lost; ``weight`` 3
    for a strong verdict. ``style`` holds the model's minus the baseline's style features."""

    question_id: str
    y: float
    weight: int
    style: tuple[float, ...] = ()


def battle(
    question_id: str, verdict: str, model_is_a: bool, style: tuple[float, ...] = ()
) -> Battle:
    """The battle a verdict means for the model, which sat in position A or B."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    weight = STRONG_WEIGHT if ">>" in verdict else 1
    if verdict == "A=B":
        y = 0.5
    else:
        a_won = verdict.startswith("A")
        y = 1.0 if a_won == model_is_a else 0.0
    return Battle(question_id, y, weight, style)


def _bt_win_rate(battles: Sequence[Battle], style: bool) -> float:
    y = np.array([b.y for b in battles])
    w = np.array([b.weight for b in battles], dtype=float)
    mean = float((w * y).sum() / w.sum())
    if not style or mean in (0.0, 1.0):
        # With one model against an anchored baseline the fit has a closed form: the
        # weighted share of battles won (ties half); all wins or all losses are its limits.
        return mean
    s = np.array([b.style for b in battles], dtype=float)
    # Scaled, not centred: the intercept must be the win rate at zero style difference,
    # not at the model's average one (a model that is usually longer gets no credit for it).
    sd = s.std(axis=0)
    sd[sd == 0] = 1.0
    s = s / sd
    x = np.column_stack([np.ones(len(y)), s])
    beta = fit_logistic(x, y, w, l2=_ridge(x.shape[1]))
    return _sigmoid(float(beta[0]))


def _bootstrap(
    items: Sequence, stat: Callable[[Sequence], float], rounds: int, seed: int
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(items)
    values = []
    for _ in range(rounds):
        sample = [items[i] for i in rng.integers(0, n, size=n)]
        values.append(stat(sample))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def arena_score(
    battles: Sequence[Battle],
    *,
    style_control: bool = False,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, float]:
    """Win rate against the baseline in percent, with its bootstrap interval."""
    if not battles:
        return {"score": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    score = _bt_win_rate(battles, style_control)
    lo, hi = _bootstrap(battles, lambda b: _bt_win_rate(b, style_control), rounds, seed)
    return {"score": 100 * score, "ci_low": 100 * lo, "ci_high": 100 * hi}


_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+\.)\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_features(text: str) -> tuple[float, float, float, float]:
    """(length in words, headers, list items, bold spans) of an answer."""
    return (
        float(len(text.split())),
        float(len(_HEADER.findall(text))),
        float(len(_LIST.findall(text))),
        float(len(_BOLD.findall(text))),
    )


def style_difference(model: str, baseline: str) -> tuple[float, ...]:
    """Per feature ``(m - b) / (m + b)`` (0 when both are 0), as Arena-Hard normalises them."""
    out = []
    for m, b in zip(style_features(model), style_features(baseline), strict=True):
        out.append(0.0 if m + b == 0 else (m - b) / (m + b))
    return tuple(out)


# --------------------------------------------------------------------------- mt-bench


def mt_bench_score(
    ratings: Sequence[tuple[int, float]], *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict[str, float]:
    """Mean rating overall and per turn (``turn_1``, ``turn_2``...), with a bootstrap
    interval of the overall mean over the ratings. ``ratings`` are (turn, rating)."""
    if not ratings:
        return {"score": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    values = [r for _, r in ratings]
    out = {"score": float(np.mean(values))}
    lo, hi = _bootstrap(values, lambda v: float(np.mean(v)), rounds, seed)
    out.update(ci_low=lo, ci_high=hi)
    for turn in sorted({t for t, _ in ratings}):
        out[f"turn_{turn}"] = float(np.mean([r for t, r in ratings if t == turn]))
    return out


# --------------------------------------------------------------------------- alpaca-eval


def _lc_win_rate(prefs: Sequence[tuple[float, float]]) -> float:
    """``prefs``: (model preference 0/0.5/1, model length - reference length)."""
    y = np.array([p for p, _ in prefs])
    mean = float(y.mean())
    if mean in (0.0, 1.0):
        return mean
    d = np.array([d for _, d in prefs], dtype=float)
    sd = d.std()
    feature = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    x = np.column_stack([np.ones(len(y)), feature])
    beta = fit_logistic(x, y, l2=_ridge(2))
    return _sigmoid(float(beta[0]))


def alpaca_score(
    prefs: Sequence[tuple[float, float]], *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> dict[str, float]:
    """Length-controlled win rate (the score) and the raw one, in percent, each with a
    bootstrap interval over the instructions."""
    if not prefs:
        nan = float("nan")
        return {"score": nan, "ci_low": nan, "ci_high": nan, "win_rate": nan}
    raw = float(np.mean([p for p, _ in prefs]))
    lc = _lc_win_rate(prefs)
    lo, hi = _bootstrap(prefs, _lc_win_rate, rounds, seed)
    rlo, rhi = _bootstrap(prefs, lambda s: float(np.mean([p for p, _ in s])), rounds, seed)
    return {
        "score": 100 * lc,
        "ci_low": 100 * lo,
        "ci_high": 100 * hi,
        "win_rate": 100 * raw,
        "win_rate_ci_low": 100 * rlo,
        "win_rate_ci_high": 100 * rhi,
    }
