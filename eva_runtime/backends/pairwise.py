"""Pairwise rewards: a preference model compares the responses of a prompt two at a time.

For the n responses of one prompt a *preference* gives P(y_i beats y_j) for every pair
i < j; the matrix is completed with P(j beats i) = 1 - P(i beats j), and each response's
score is its mean win probability against the other n - 1 (the Borda-style score of the
eva reference code, in [0, 1]). That score goes wherever a pointwise reward goes:
informativeness, the best/worst pair, the rollouts' ``reward`` column. With one response
the score is 0.5; when every comparison is a tie every score is 0.5 (a gap of 0).

Four sources of the preference sit behind ``Preference.prefer(prompts, a, b)``:

* ``PairRMPreference``: PairRM itself (a DeBERTa-v3 encoder with llm-blender's pairwise head),
  loaded from its checkpoint with the same weight layout, no llm-blender needed;
* ``RankerPreference``: any other PairRM-style cross-encoder, i.e. a transformers
  sequence-classification model with one logit read on the input
  ``<|source|>{prompt}<|candidate1|>{a}<|candidate2|>{b}``; sigmoid(logit) = P(a beats b).
* ``JudgePreference``: an LLM judge (any generation backend or endpoint) that answers with
  an arena-style verdict ``[[A>>B]] .. [[B>>A]]``, parsed by the benchmark judges' parser.
* ``PythonPreference``: ``f(prompts, responses_a, responses_b) -> probabilities``.

Position bias: with ``both_orders`` (the default) every pair is asked as (a, b) and as
(b, a), and P = (P(a, b) + 1 - P(b, a)) / 2. Cost: n(n-1)/2 pairs per prompt, twice with
both orders: for n = 4, 12 preference calls per prompt where a pointwise reward makes 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..bench.scoring import parse_verdict
from ._common import free_torch_memory, pick_device, right_padded_batches, torch_dtype
from .functions import call_user_function, checked_numbers, load_function
from .generation import Generator, SamplingParams

__all__ = [
    "JUDGE_PAIRWISE_PROMPT",
    "RANKER_TAGS",
    "VERDICT_PROBABILITY",
    "JudgePreference",
    "PairRMPreference",
    "PairwiseReward",
    "Preference",
    "PythonPreference",
    "RankerPreference",
    "fit_lengths",
    "is_pairrm",
    "ranker_text",
    "win_scores",
]

ProgressCallback = Callable[[int], None]

# What a judge's verdict says about P(A beats B).
VERDICT_PROBABILITY = {"A>>B": 1.0, "A>B": 0.75, "A=B": 0.5, "B>A": 0.25, "B>>A": 0.0}

# Comparisons handed to a preference per call: progress moves between calls.
CHUNK = 64


class Preference(Protocol):
    def prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """P(a beats b) per row, each in [0, 1]."""
        ...

    def close(self) -> None: ...


def win_scores(matrix: object) -> np.ndarray:
    """Each response's mean win probability against the others of its prompt.

    ``matrix[i, j]`` is P(i beats j); the diagonal is ignored. One response scores 0.5.
    """
    p = np.asarray(matrix, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"a preference matrix is square, got shape {p.shape}")
    n = p.shape[0]
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.array([0.5])
    off = ~np.eye(n, dtype=bool)
    if not np.isfinite(p[off]).all() or (p[off] < 0).any() or (p[off] > 1).any():
        raise ValueError("preference probabilities must be finite and within [0, 1]")
    scores: np.ndarray = np.where(off, p, 0.0).sum(axis=1) / (n - 1)
    return scores


def symmetric(forward: float, backward: float) -> float:
    """P(a beats b) from the answer in both orders: the position bias cancels."""
    return 0.5 + (forward - backward) / 2.0  # = (forward + 1 - backward) / 2, exact at ties


class PairwiseReward:
    """A ``RewardModel`` whose scores are mean win probabilities among a prompt's responses.

    Rows are grouped by prompt text, wherever they sit in the call; ``score`` returns one
    score per row in the order given. ``matrices`` (after ``score_with_matrix``) hold each
    row's probabilities of beating every response of its prompt, in the group's order.
    """

    def __init__(self, preference: Preference, *, both_orders: bool = True) -> None:
        self.preference = preference
        self.both_orders = both_orders
        self.comparisons = 0  # preference calls made (both orders count twice)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[float]:
        return self.score_with_matrix(prompts, responses, on_progress=on_progress)[0]

    def score_with_matrix(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> tuple[list[float], list[list[float]]]:
        """(score per row, per row: P(row beats each response of its prompt); self = 0.5)."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"{len(prompts)} prompts but {len(responses)} responses: they must pair up"
            )
        groups: dict[str, list[int]] = {}
        for row, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(row)
        scores = [0.5] * len(prompts)
        rows_probs: list[list[float]] = [[] for _ in prompts]
        pending: list[list[int]] = []
        size = 0
        for members in groups.values():
            pending.append(members)
            size += len(members) * (len(members) - 1) // 2
            if size >= CHUNK:
                self._score_groups(pending, prompts, responses, scores, rows_probs, on_progress)
                pending, size = [], 0
        if pending:
            self._score_groups(pending, prompts, responses, scores, rows_probs, on_progress)
        return scores, rows_probs

    def compare(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        """P(a beats b) per row, both orders asked when ``both_orders``."""
        forward = self._ask(prompts, responses_a, responses_b)
        if not self.both_orders:
            return forward
        backward = self._ask(prompts, responses_b, responses_a)
        return [symmetric(f, b) for f, b in zip(forward, backward, strict=True)]

    def _ask(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float]:
        if not prompts:
            return []
        self.comparisons += len(prompts)
        return checked_probabilities(
            self.preference.prefer(list(prompts), list(a), list(b)), len(prompts), "preference"
        )

    def _score_groups(
        self,
        groups: list[list[int]],
        prompts: Sequence[str],
        responses: Sequence[str],
        scores: list[float],
        rows_probs: list[list[float]],
        on_progress: ProgressCallback | None,
    ) -> None:
        jobs = [(g, i, j) for g, m in enumerate(groups) for i in range(len(m)) for j in range(i)]
        probs = self.compare(
            [prompts[groups[g][0]] for g, _, _ in jobs],
            [responses[groups[g][i]] for g, i, _ in jobs],
            [responses[groups[g][j]] for g, _, j in jobs],
        )
        matrices = [np.full((len(m), len(m)), 0.5) for m in groups]
        for (g, i, j), p in zip(jobs, probs, strict=True):
            matrices[g][i, j] = p
            matrices[g][j, i] = 1.0 - p
        for members, matrix in zip(groups, matrices, strict=True):
            for row, value, probs_row in zip(members, win_scores(matrix), matrix, strict=True):
                scores[row] = float(value)
                rows_probs[row] = [float(x) for x in probs_row]
        if on_progress is not None:
            on_progress(sum(len(m) for m in groups))

    def close(self) -> None:
        self.preference.close()


def checked_probabilities(result: Any, expected: int, where: str) -> list[float]:
    """One number in [0, 1] per pair, or a ValueError naming the first bad index."""
    return checked_numbers(result, expected, where, what="probabilities", per="pairs",
                           probabilities=True)  # fmt: skip


# --------------------------------------------------------------------------- ranker


RANKER_TAGS = ("<|source|>", "<|candidate1|>", "<|candidate2|>")


def ranker_text(prompt: str, a: str, b: str) -> str:
    """The PairRM input layout: the source, then the two candidates, each after its tag."""
    return "".join(tag + part for tag, part in zip(RANKER_TAGS, (prompt, a, b), strict=True))


def fit_lengths(lengths: tuple[int, ...], room: int) -> tuple[int, int, int]:
    """Tokens kept of (prompt, a, b) within ``room``; each part keeps its end.

    The prompt gives way first, down to a quarter of the room; the candidates then share
    what is left evenly (a short one leaves its slack to the other), so both are seen.
    """
    lp, la, lb = lengths
    if lp + la + lb <= room:
        return lp, la, lb
    keep_p = min(lp, max(room - la - lb, room // 4))
    rest = room - keep_p
    half = rest // 2
    if la <= half:
        return keep_p, la, min(lb, rest - la)
    if lb <= half:
        return keep_p, min(la, rest - lb), lb
    return keep_p, half, rest - half


def _special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] .. [SEP])."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return list(wrapped[:start]), list(wrapped[start + len(plain) :])
    return [], []


class _LocalPreference:
    """What the local pairwise models share: batched, right-padded forward passes over the
    encoded (prompt, a, b) triples, each read as the probability that a beats b."""

    model_path: str
    batch_size: int
    label = "model"  # how errors name the model
    pad_default: int | None = None  # the pad id where the tokenizer has none
    _model: Any
    _tokenizer: Any
    _device: Any

    def _encode(self, prompt: str, a: str, b: str) -> list[int]:
        raise NotImplementedError

    def _win_logits(self, ids: Any, mask: Any) -> Any:
        """One logit per row: the log-odds that candidate a wins."""
        raise NotImplementedError

    def prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        import torch

        if self._model is None:
            raise RuntimeError("prefer() after close()")
        encoded = [
            self._encode(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)
        ]
        out = [0.5] * len(encoded)
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = self.pad_default
        for index, ids, mask in right_padded_batches(encoded, pad, self.batch_size):
            with torch.inference_mode():
                logits = self._win_logits(ids.to(self._device), mask.to(self._device))
            for i, v in zip(index, torch.sigmoid(logits.float()).tolist(), strict=True):
                out[i] = float(v)
        return checked_probabilities(out, len(encoded), f"{self.label} {self.model_path}")

    def close(self) -> None:
        if self._model is None:
            return
        self._model = None
        free_torch_memory()


class RankerPreference(_LocalPreference):
    """A cross-encoder ranker: one sequence-classification logit, the log-odds a beats b.

    Too long inputs keep the end of each part in proportion (the prompt is cut first), so
    both candidates are always seen.
    """

    label = "ranker"

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 8,
        max_length: int = 4096,
        trust_remote_code: bool = False,
        dtype: str = "auto",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_path = model_path
        self.batch_size = batch_size
        self.max_length = max_length
        self._device = pick_device()
        self._tokenizer: Any = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            dtype=torch_dtype(dtype, self._device),
            trust_remote_code=trust_remote_code,
        )
        self._model: Any = model.to(self._device).eval()
        if getattr(self._model.config, "num_labels", 1) != 1:
            raise ValueError(
                f"ranker {model_path} has {self._model.config.num_labels} labels; a pairwise "
                "ranker has one logit (the log-odds that candidate 1 wins)"
            )
        tok = self._tokenizer
        self._tags = [tok(t, add_special_tokens=False)["input_ids"] for t in RANKER_TAGS]
        # Tokens of the tags and of the special tokens around the whole input.
        self._prefix, self._suffix = _special_wrap(tok)
        self._overhead = sum(map(len, self._tags)) + len(self._prefix) + len(self._suffix)
        if self.max_length < self._overhead + 3:
            raise ValueError(f"max_length {max_length} leaves no room for the ranker's input")

    def _encode(self, prompt: str, a: str, b: str) -> list[int]:
        tok = self._tokenizer
        parts = [tok(t, add_special_tokens=False)["input_ids"] for t in (prompt, a, b)]
        lengths = fit_lengths(tuple(len(p) for p in parts), self.max_length - self._overhead)
        body: list[int] = []
        for tag, part, keep in zip(self._tags, parts, lengths, strict=True):
            body += tag + (part[len(part) - keep :] if keep else [])
        return [*self._prefix, *body, *self._suffix]

    def _win_logits(self, ids: Any, mask: Any) -> Any:
        logits = self._model(input_ids=ids, attention_mask=mask).logits
        return logits.reshape(len(ids), -1)[:, 0]


# --------------------------------------------------------------------------- PairRM

PAIRRM_ARCHITECTURE = "DebertaV2PairRM"
# PairRM's input budget: the source keeps at most this many tokens, the two candidates share
# the rest of PAIRRM_MAX_LENGTH evenly; each part keeps its beginning.
PAIRRM_SOURCE_MAX = 1224
PAIRRM_MAX_LENGTH = 2048


def is_pairrm(model_path: str) -> bool:
    """Whether ``model_path`` holds a PairRM checkpoint (llm-blender's own head)."""
    import json
    from pathlib import Path

    config = Path(model_path) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return PAIRRM_ARCHITECTURE in architectures


def _pairrm_model_class() -> Any:
    """A module with the weight layout of PairRM's checkpoints: a DeBERTa-v2 encoder under
    ``pretrained_model`` and ``head_layer`` (dropout, linear 2h->h, tanh, dropout, linear
    h->n_tasks) applied to the source tag's encoding joined with each candidate tag's."""
    import torch
    from torch import nn
    from transformers import DebertaV2Model, DebertaV2PreTrainedModel

    class PairRMModel(DebertaV2PreTrainedModel):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            hidden = config.hidden_size
            self.pretrained_model = DebertaV2Model(config)
            self.head_layer = nn.Sequential(
                nn.Dropout(config.drop_out),
                nn.Linear(2 * hidden, hidden),
                nn.Tanh(),
                nn.Dropout(config.drop_out),
                nn.Linear(hidden, config.n_tasks),
            )
            self.post_init()

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self.pretrained_model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)

            def at(tag_id: int) -> Any:
                # The first position of the tag in each row (every row holds each tag once).
                return states[rows, (input_ids == tag_id).int().argmax(dim=1)]

            source = at(self.config.source_prefix_id)
            left = self.head_layer(torch.cat([source, at(self.config.cand1_prefix_id)], dim=-1))
            right = self.head_layer(torch.cat([source, at(self.config.cand2_prefix_id)], dim=-1))
            return (left - right).mean(dim=-1)  # the log-odds that candidate 1 is better

    return PairRMModel


class PairRMPreference(_LocalPreference):
    """PairRM (Jiang et al. 2023, the ranker of the eva reference code) from its checkpoint,
    e.g. a local copy of ``llm-blender/PairRM-hf``, without the llm-blender package.

    The input is PairRM's: ``<|source|>prompt``, ``<|candidate1|>a``, ``<|candidate2|>b``, each
    encoded with the tokenizer's special tokens and joined; the source keeps at most 1224
    tokens and the candidates share the rest of 2048. P(a beats b) = sigmoid(mean over the
    head's tasks of head(source, a) - head(source, b)).
    """

    label = "PairRM"
    pad_default = 0  # a pad id always: batches of PairRM's size

    def __init__(self, model_path: str, *, batch_size: int = 8, dtype: str = "auto") -> None:
        from transformers import AutoTokenizer

        self.model_path = model_path
        self.batch_size = batch_size
        self._device = pick_device()
        self._tokenizer: Any = AutoTokenizer.from_pretrained(model_path)
        model = _pairrm_model_class().from_pretrained(
            model_path, dtype=torch_dtype(dtype, self._device)
        )
        self._model: Any = model.to(self._device).eval()
        config = self._model.config
        for tag, key in zip(
            RANKER_TAGS, ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id"), strict=True
        ):
            token = self._tokenizer.convert_tokens_to_ids(tag)
            if token != getattr(config, key, None):
                raise ValueError(
                    f"PairRM checkpoint {model_path}: its tokenizer maps {tag} to {token}, "
                    f"its config.{key} is {getattr(config, key, None)}"
                )

    def _encode(self, prompt: str, a: str, b: str) -> list[int]:
        tok = self._tokenizer
        source = tok(RANKER_TAGS[0] + prompt, truncation=True, max_length=PAIRRM_SOURCE_MAX)[
            "input_ids"
        ]
        room = (PAIRRM_MAX_LENGTH - len(source)) // 2
        first = tok(RANKER_TAGS[1] + a, truncation=True, max_length=room)["input_ids"]
        second = tok(RANKER_TAGS[2] + b, truncation=True, max_length=room)["input_ids"]
        return [*source, *first, *second]

    def _win_logits(self, ids: Any, mask: Any) -> Any:
        return self._model(ids, mask)


# --------------------------------------------------------------------------- judge

JUDGE_PAIRWISE_PROMPT = """Two AI assistants answered the same request. Decide which answer is \
better: which does what the request asks, respecting its constraints, correctly, completely \
and clearly. A longer answer is not a better answer by itself.

<request>
{prompt}
</request>

<answer_a>
{a}
</answer_a>

<answer_b>
{b}
</answer_b>

End your reply with exactly one verdict: [[A>>B]] (A is much better), [[A>B]], [[A=B]], \
[[B>A]] or [[B>>A]] (B is much better)."""


class JudgePreference:
    """An LLM compares two answers and writes an arena-style verdict (greedy decoding).

    A reply without a verdict is asked once more; a second miss counts as a tie (0.5) and
    in ``unparsed``, which, like the pointwise judge's, tells how much signal is lost.
    The generator belongs to the caller, who closes it.
    """

    def __init__(self, generator: Generator, *, max_new_tokens: int = 256, seed: int = 0) -> None:
        self.generator = generator
        self.params = SamplingParams(
            n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed
        )
        self.unparsed = 0

    def _verdicts(self, asks: list[str]) -> list[float | None]:
        replies = self.generator.generate(asks, self.params)
        out: list[float | None] = []
        for reply in replies:
            verdict = parse_verdict(reply[0].text if reply else "")
            out.append(None if verdict is None else VERDICT_PROBABILITY[verdict])
        return out

    def prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        asks = [
            JUDGE_PAIRWISE_PROMPT.format(prompt=p, a=a, b=b)
            for p, a, b in zip(prompts, responses_a, responses_b, strict=True)
        ]
        probs = self._verdicts(asks)
        missing = [i for i, p in enumerate(probs) if p is None]
        if missing:
            for i, p in zip(missing, self._verdicts([asks[i] for i in missing]), strict=True):
                probs[i] = p
        result: list[float] = []
        for p in probs:
            if p is None:
                self.unparsed += 1
                p = 0.5
            result.append(p)
        return result

    def close(self) -> None:
        """Nothing to free: the generator is the caller's."""


# --------------------------------------------------------------------------- python


class PythonPreference:
    """A user's ``f(prompts, responses_a, responses_b) -> probabilities`` (P(a beats b))."""

    def __init__(self, function: str) -> None:
        self.name = function
        self._fn = load_function(function)

    def prefer(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> list[float]:
        where = f"preference function {self.name!r}"
        result = call_user_function(self._fn, where, prompts, responses_a, responses_b)
        return checked_probabilities(result, len(prompts), where)

    def close(self) -> None:
        """Nothing to free."""
