"""Scoring responses: the signal that decides which response is "chosen" and which prompts
are informative enough to evolve.

Five ways to score sit behind one ``RewardModel.score``: a sequence-classification reward
model, an ArmoRM-style model with its own code, an LLM judge, a user's Python function, and
a pairwise preference (``pairwise.py``: mean win probabilities among a prompt's responses).
Every score that leaves this module is a finite float: a NaN would silently win or lose
every comparison downstream, so any backend that produces one raises instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..spec import RewardType
from ._common import (
    check_finite,
    free_torch_memory,
    pick_device,
    render_exchange,
    right_padded_batches,
    torch_dtype,
)
from .functions import call_user_function, checked_numbers, load_function
from .generation import Generator, SamplingParams

__all__ = [
    "JUDGE_FALLBACK_SCORE",
    "REWARD_TYPES",
    "ClassifierReward",
    "JudgeReward",
    "PythonReward",
    "RewardModel",
    "make_reward_model",
    "parse_rating",
]

REWARD_TYPES: tuple[str, ...] = tuple(t.value for t in RewardType)

ProgressCallback = Callable[[int], None]


@runtime_checkable
class RewardModel(Protocol):
    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[float]:
        """One finite score per (prompt, response) pair; higher is better.

        ``on_progress(k)`` receives the number of pairs scored since its previous call.
        """
        ...

    def close(self) -> None: ...


def make_reward_model(
    kind: str,
    *,
    model: str | None = None,
    function: str | None = None,
    trust_remote_code: bool = False,
    batch_size: int = 8,
    max_length: int = 4096,
    judge_generator: Generator | None = None,
    preference: str = "ranker",
    both_orders: bool = True,
) -> RewardModel:
    """Build the reward model a run's ``rewardModel`` section describes."""
    kind = str(getattr(kind, "value", kind))  # a RewardType member or its value
    if kind not in REWARD_TYPES:
        raise ValueError(f"unknown reward model type {kind!r}; choose one of {REWARD_TYPES}")
    if kind == "pairwise":
        return _pairwise(
            str(getattr(preference, "value", preference)),
            model=model,
            function=function,
            trust_remote_code=trust_remote_code,
            batch_size=batch_size,
            max_length=max_length,
            judge_generator=judge_generator,
            both_orders=both_orders,
        )
    if kind == "python":
        if not function:
            raise ValueError("reward type 'python' needs function: 'module:function'")
        return PythonReward(function)
    if kind == "judge":
        if judge_generator is None:
            raise ValueError(
                "reward type 'judge' needs judge_generator: build one with make_generator() "
                "for the judge model or endpoint"
            )
        return JudgeReward(judge_generator)
    if not model:
        raise ValueError(f"reward type {kind!r} needs a model")
    if kind == "armo" and not trust_remote_code:
        raise ValueError(
            "reward type 'armo' loads a model that runs its own Python code (ArmoRM ships "
            "custom modeling code). Set `rewardModel.trustRemoteCode: true` if you trust "
            f"{model!r}."
        )
    from ..models import resolve_model

    path = resolve_model(model, trust_remote_code=trust_remote_code)
    return ClassifierReward(
        path,
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
        max_length=max_length,
        use_score_output=kind == "armo",
    )


def _pairwise(
    source: str,
    *,
    model: str | None,
    function: str | None,
    trust_remote_code: bool,
    batch_size: int,
    max_length: int,
    judge_generator: Generator | None,
    both_orders: bool,
) -> RewardModel:
    from .pairwise import (
        JudgePreference,
        PairwiseReward,
        Preference,
        PythonPreference,
        RankerPreference,
    )

    pref: Preference
    if source == "python":
        if not function:
            raise ValueError("pairwise preference 'python' needs function: 'module:function'")
        pref = PythonPreference(function)
    elif source == "judge":
        if judge_generator is None:
            raise ValueError("pairwise preference 'judge' needs judge_generator")
        pref = JudgePreference(judge_generator)
    elif source == "ranker":
        if not model:
            raise ValueError("pairwise preference 'ranker' needs a model")
        from ..models import resolve_model
        from .pairwise import PairRMPreference, is_pairrm

        path = resolve_model(model, trust_remote_code=trust_remote_code)
        if is_pairrm(path):
            pref = PairRMPreference(path, batch_size=batch_size)
        else:
            pref = RankerPreference(
                path,
                batch_size=batch_size,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
            )
    else:
        raise ValueError(f"unknown pairwise preference {source!r}; choose ranker, judge or python")
    return PairwiseReward(pref, both_orders=both_orders)


# --------------------------------------------------------------------------- classifier


class ClassifierReward:
    """A sequence-classification reward model; the score is its first logit (or ``.score``).

    Conversations are rendered with the tokenizer's chat template, exactly as the reward
    model saw them in training, and padded on the right with the *model's* pad id. Right
    padding is what every pooling convention handles: transformers' own (the rightmost
    non-pad token), the older "first pad minus one" used by custom code such as ArmoRM's, and
    plain "last position" pooling. When no usable pad id exists, pairs are scored one at a
    time, which needs no padding at all. Too long conversations lose their *beginning*
    (left truncation): the score is read at the final token, which must stay the response's.

    ``use_score_output`` is for ArmoRM-style models whose output carries the preference
    score in ``.score`` (their ``logits`` may hold something else); it falls back to logits.
    """

    def __init__(
        self,
        model_path: str,
        *,
        trust_remote_code: bool = False,
        batch_size: int = 8,
        max_length: int = 4096,
        use_score_output: bool = False,
        dtype: str = "auto",
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1 or max_length < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        self.model_path = model_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.use_score_output = use_score_output
        self._device = pick_device()
        self._tokenizer: Any = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
        on_gpu = self._device.type == "cuda"
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            dtype=torch_dtype(dtype, self._device),
            trust_remote_code=trust_remote_code,
            device_map="cuda" if on_gpu else None,  # straight to the GPU, no CPU copy first
        )
        self._model: Any = model.eval()
        self._pad_id = self._usable_pad_id()

    def _usable_pad_id(self) -> int | None:
        config = self._model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        pad = getattr(text_config, "pad_token_id", None)
        if pad is None:
            pad = self._tokenizer.pad_token_id
            if pad is not None:
                # transformers' pooling finds the last real token through the config's pad id.
                text_config.pad_token_id = pad
        vocab = self._model.get_input_embeddings().num_embeddings
        if pad is None or not 0 <= int(pad) < vocab:
            return None
        return int(pad)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[float]:
        import torch

        _check_pairs(prompts, responses)
        if self._model is None:
            raise RuntimeError("score() after close()")
        encoded = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        # Right padding keeps scores unchanged (see the class docstring).
        scores: list[float] = [0.0] * len(encoded)
        for index, ids, mask in right_padded_batches(encoded, self._pad_id, self.batch_size):
            with torch.inference_mode():
                device = self._model.device
                output = self._model(input_ids=ids.to(device), attention_mask=mask.to(device))
            values = self._extract(output)
            for i, value in zip(index, values, strict=True):
                scores[i] = value
            if on_progress is not None:
                on_progress(len(index))
        return check_finite(scores, f"reward model {self.model_path}")

    def _encode(self, prompt: str, response: str) -> list[int]:
        text, templated = render_exchange(self._tokenizer, prompt, response)
        ids = self._tokenizer(text, add_special_tokens=not templated)["input_ids"]
        return list(ids[-self.max_length :])

    def _extract(self, output: Any) -> list[float]:
        value = getattr(output, "score", None) if self.use_score_output else None
        if value is None:
            value = output.logits if hasattr(output, "logits") else output[0]
        value = value.float()
        if value.ndim == 2:
            value = value[:, 0]
        return [float(v) for v in value.reshape(-1).tolist()]

    def close(self) -> None:
        if self._model is None:
            return
        self._model = None
        free_torch_memory()


# --------------------------------------------------------------------------- judge

JUDGE_FALLBACK_SCORE = 5.5

JUDGE_PROMPT = """You are reviewing an AI assistant's answer to a user's request.

Judge the answer on these points, in this order of importance:
1. Does it do what the request asks, respecting every constraint it sets?
2. Is it correct, with no invented facts or faulty reasoning?
3. Is it complete and useful without padding?
4. Is it clear and well organised?
A longer answer is not a better answer by itself.

<request>
{prompt}
</request>

<answer>
{response}
</answer>

Rate the answer with a single whole number from 1 (worthless or wrong) to 10 (excellent).
Reply with the rating first, exactly in the form "Rating: N"."""

JUDGE_RETRY_PROMPT = """Request:
{prompt}

Answer:
{response}

On a scale from 1 to 10, how good is this answer? Reply with one number and nothing else."""

_NUMBER = r"(\d+(?:\.\d+)?)"
_LABELLED = re.compile(r"(?i)\b(?:rating|score|grade)\b[^\d\n]{0,12}?" + _NUMBER)
_OUT_OF_TEN = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*10(?![\d.]*\d)", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.])" + _NUMBER + r"(?![\w]|\.\d)")


def parse_rating(text: str) -> float | None:
    """The 1-10 rating in a judge's reply, or None when there is none.

    Looked for in order of how explicit it is: a labelled "Rating: 7" (also "score is 8",
    "**Rating:** 9"), then "7/10" or "7 out of 10", then the first stand-alone number in
    range ("**8**", "8."). A labelled rating outside 1-10 makes the reply unparseable
    rather than letting some other number in the text stand in for it.
    """
    if not text:
        return None
    labelled = _LABELLED.search(text)
    if labelled:
        value = float(labelled.group(1))
        return value if 1 <= value <= 10 else None
    for pattern in (_OUT_OF_TEN, _BARE):
        for match in pattern.finditer(text):
            value = float(match.group(1))
            if 1 <= value <= 10:
                return value
    return None


class JudgeReward:
    """An LLM rates each response from 1 to 10 (greedy decoding, a short reply).

    Fallback for replies without a rating: the pair is asked once more with a terser prompt
    that demands a bare number; if that reply has no rating either, the pair gets
    ``JUDGE_FALLBACK_SCORE`` (5.5, the middle of the scale) and ``unparsed`` goes up by one.
    The middle value keeps such a response from being picked as the best or the worst of its
    prompt on the judge's whim, and it shrinks rather than inflates a prompt's reward gap;
    a NaN would instead break every comparison. Watch ``unparsed``: a high count means the
    judge model is not following the format and its scores carry little signal.

    The judge generator belongs to the caller, who closes it; ``close()`` leaves it alone.
    """

    def __init__(self, generator: Generator, *, max_new_tokens: int = 32, seed: int = 0) -> None:
        self.generator = generator
        self.params = SamplingParams(
            n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed
        )
        self.unparsed = 0
        self.retried = 0

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[float]:
        _check_pairs(prompts, responses)
        pairs = list(zip(prompts, responses, strict=True))
        asks = [JUDGE_PROMPT.format(prompt=p, response=r) for p, r in pairs]
        replies = self.generator.generate(asks, self.params, on_progress=on_progress)
        ratings = [parse_rating(reply[0].text) for reply in replies]

        missing = [i for i, rating in enumerate(ratings) if rating is None]
        if missing:
            self.retried += len(missing)
            retry = [
                JUDGE_RETRY_PROMPT.format(prompt=pairs[i][0], response=pairs[i][1]) for i in missing
            ]
            for i, reply in zip(missing, self.generator.generate(retry, self.params), strict=True):
                ratings[i] = parse_rating(reply[0].text)
        scores: list[float] = []
        for rating in ratings:
            if rating is None:
                self.unparsed += 1
                rating = JUDGE_FALLBACK_SCORE
            scores.append(rating)
        return check_finite(scores, "judge")

    def close(self) -> None:
        """Nothing to free: the generator is the caller's."""


# --------------------------------------------------------------------------- python


class PythonReward:
    """A user's function ``f(prompts, responses) -> scores``, for rule-based or custom rewards.

    ``function`` is "module:attribute" (the attribute may be dotted, e.g. "mod:Cls.method").
    Whatever it returns is checked: one finite number per pair, or a ValueError that names
    the function and the first offending index, because a silently wrong reward would train
    the policy towards nonsense.
    """

    def __init__(self, function: str) -> None:
        self.name = function
        self._fn = load_function(function)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> list[float]:
        _check_pairs(prompts, responses)
        result = call_user_function(self._fn, f"reward function {self.name!r}", prompts, responses)
        scores = checked_numbers(result, len(prompts), f"reward function {self.name!r}")
        if on_progress is not None:
            on_progress(len(scores))
        return scores

    def close(self) -> None:
        """Nothing to free."""


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(
            f"{len(prompts)} prompts but {len(responses)} responses: they must pair up"
        )
