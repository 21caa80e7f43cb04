"""The pairwise preference sources for real: a tiny PairRM-style DeBERTa cross-encoder, and
an LLM judge behind a local OpenAI-compatible server that answers with verdicts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.backends.generation import make_generator
from eva_runtime.backends.pairwise import (
    RANKER_TAGS,
    JudgePreference,
    PairwiseReward,
    RankerPreference,
)
from eva_runtime.backends.reward_model import make_reward_model
from judge_stub import judge_stub

PROMPTS = ["What is the capital of France?"] * 3 + ["Explain why the sky is blue."] * 2
ANSWERS = [
    "Paris.",
    "The quick brown fox jumps over the lazy dog 0123456789. " * 3,
    "Lyon, I think.",
    "Blue light scatters more.",
    "no",
]


def test_the_ranker_is_a_real_cross_encoder(tiny_ranker: Path) -> None:
    batched = RankerPreference(str(tiny_ranker), batch_size=4, max_length=64)
    single = RankerPreference(str(tiny_ranker), batch_size=1, max_length=64)
    reversed_ = ANSWERS[::-1]
    a = batched.prefer(PROMPTS, ANSWERS, reversed_)
    b = single.prefer(PROMPTS, ANSWERS, reversed_)
    # Padding in a batch changes nothing; every value is a probability that varies.
    assert a == pytest.approx(b, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in a) and max(a) - min(a) > 0.05
    # Too long inputs keep all three tags and the end of both candidates.
    ids = batched._encode("x " * 200, ANSWERS[1], "short")
    text = batched._tokenizer.decode(ids)
    assert len(ids) <= 64 and all(tag in text for tag in RANKER_TAGS)
    assert text.rstrip().endswith("short")
    batched.close()
    single.close()
    with pytest.raises(RuntimeError, match="after close"):
        batched.prefer(["p"], ["a"], ["b"])


def test_the_ranker_through_make_reward_model(tiny_ranker: Path, tiny_classifier: Path) -> None:
    reward = make_reward_model("pairwise", model=str(tiny_ranker), max_length=64)
    assert isinstance(reward, PairwiseReward)
    scores = reward.score(PROMPTS, ANSWERS)
    # Mean win probabilities: each prompt's scores average 1/2.
    assert sum(scores[:3]) / 3 == pytest.approx(0.5)
    assert sum(scores[3:]) / 2 == pytest.approx(0.5)
    assert len(set(scores)) > 2
    assert reward.comparisons == 2 * (3 + 1)
    reward.close()
    # A classifier with two labels has no single log-odds to read: refused by name.
    from transformers import AutoConfig, AutoModelForSequenceClassification

    two = tiny_classifier.parent / "two-labels"
    config = AutoConfig.from_pretrained(str(tiny_classifier), num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(two)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (two / name).write_bytes((tiny_classifier / name).read_bytes())
    with pytest.raises(ValueError, match="has 2 labels"):
        RankerPreference(str(two))


_ANSWER = re.compile(r"<answer_([ab])>\n(.*?)\n</answer_\1>", re.S)


def _longer_wins(body: dict, n: int) -> tuple[int, str, float]:
    """A judge that prefers the longer answer, strongly when it is twice as long."""
    found = dict(_ANSWER.findall(body["messages"][-1]["content"]))
    a, b = len(found["a"]), len(found["b"])
    if a == b:
        return 200, "They are equal. [[A=B]]", 0.0
    verdict = ("A>>B" if a >= 2 * b else "A>B") if a > b else ("B>>A" if b >= 2 * a else "B>A")
    return 200, f"Reasoning first. Final verdict: [[{verdict}]]", 0.0


def test_the_judge_preference_over_an_endpoint() -> None:
    with judge_stub(_longer_wins) as stub:
        generator = make_generator("openai", "judge", base_url=stub.url, api_key="k")
        reward = PairwiseReward(JudgePreference(generator))
        scores = reward.score(["p"] * 3, ["x" * 10, "x" * 15, "x" * 40])
        # 40 beats both (>> each way: 1.0); 15 beats 10 (> : 0.75) and loses to 40 (0.0).
        assert scores == pytest.approx([(0.25 + 0.0) / 2, (0.75 + 0.0) / 2, 1.0])
        assert len(stub.requests) == 6  # 3 pairs, both orders
        assert all(r["temperature"] == 0.0 for r in stub.requests)
        generator.close()


def test_the_judge_is_asked_again_then_counts_a_tie() -> None:
    def garbage_then_verdict(body: dict, n: int) -> tuple[int, str, float]:
        return 200, ("I cannot decide." if n <= 2 else "[[A>B]]"), 0.0

    with judge_stub(garbage_then_verdict) as stub:
        generator = make_generator("openai", "judge", base_url=stub.url, api_key="k")
        pref = JudgePreference(generator)
        # Two asks: both unparsed, asked again: both get [[A>B]] -> 0.75.
        assert pref.prefer(["p", "q"], ["a", "b"], ["c", "d"]) == [0.75, 0.75]
        assert pref.unparsed == 0 and len(stub.requests) == 4
        generator.close()

    with judge_stub(lambda body, n: (200, "no verdict here", 0.0)) as stub:
        generator = make_generator("openai", "judge", base_url=stub.url, api_key="k")
        pref = JudgePreference(generator)
        assert pref.prefer(["p"], ["a"], ["b"]) == [0.5]
        assert pref.unparsed == 1 and len(stub.requests) == 2
        generator.close()


def _pairrm_by_hand(folder: Path, ids: list[int]) -> float:
    """PairRM's forward written out from the checkpoint's tensors, independently of eva."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, DebertaV2Model

    config = AutoConfig.from_pretrained(str(folder))
    tensors = load_file(str(folder / "model.safetensors"))
    encoder = DebertaV2Model(config).eval()
    prefix = "pretrained_model."
    encoder.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    )
    x = torch.tensor([ids])
    with torch.no_grad():
        h = encoder(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]

    def head(v: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(v @ tensors["head_layer.1.weight"].T + tensors["head_layer.1.bias"])
        return hidden @ tensors["head_layer.4.weight"].T + tensors["head_layer.4.bias"]

    src, c1, c2 = (ids.index(t) for t in (config.source_prefix_id, config.cand1_prefix_id,
                                          config.cand2_prefix_id))  # fmt: skip
    logit = (head(torch.cat([h[src], h[c1]])) - head(torch.cat([h[src], h[c2]]))).mean()
    return float(torch.sigmoid(logit))


def test_pairrm_checkpoints_load_natively(tiny_pairrm: Path) -> None:
    """A checkpoint in PairRM's layout is recognised and scored exactly as its head defines,
    in batches of any size, through make_reward_model too."""
    from eva_runtime.backends.pairwise import PairRMPreference, is_pairrm

    assert is_pairrm(str(tiny_pairrm)) and not is_pairrm(str(tiny_pairrm.parent))
    pref = PairRMPreference(str(tiny_pairrm), batch_size=2)
    a, b = ANSWERS, ANSWERS[::-1]
    probs = pref.prefer(PROMPTS, a, b)
    for i in range(len(PROMPTS)):
        ids = pref._encode(PROMPTS[i], a[i], b[i])
        assert probs[i] == pytest.approx(_pairrm_by_hand(tiny_pairrm, ids), abs=1e-5)
    assert max(probs) - min(probs) > 0.05
    # Long inputs: the source keeps at most 1224 tokens, each part keeps its tag.
    long = pref._encode("word " * 3000, "answer " * 3000, "other " * 3000)
    assert len(long) <= 2048
    tags = [pref._model.config.source_prefix_id, pref._model.config.cand1_prefix_id,
            pref._model.config.cand2_prefix_id]  # fmt: skip
    assert all(long.count(t) == 1 for t in tags)
    pref.close()
    reward = make_reward_model("pairwise", model=str(tiny_pairrm))
    assert isinstance(reward, PairwiseReward)
    assert isinstance(reward.preference, PairRMPreference)
    assert len(set(reward.score(PROMPTS, ANSWERS))) > 2
