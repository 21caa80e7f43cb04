"""Generation and reward backends run for real on tiny random models (CPU, seconds)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.backends import (
    JUDGE_FALLBACK_SCORE,
    Completion,
    JudgeReward,
    RewardModel,
    SamplingParams,
    TransformersGenerator,
    make_generator,
    make_reward_model,
    parse_rating,
)
from tiny_model import build_tiny_classifier, build_tiny_model

PROMPTS = [
    "Write a short poem about the sea and the wind.",
    "hi",
    "Explain why the sky is blue in two sentences, then list three uses of a paper clip.",
    "What is the capital of France?",
    "Give me a recipe for a simple tomato soup.",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny") / "rm")


@pytest.fixture(scope="module")
def generator(tiny_dir) -> TransformersGenerator:
    gen = make_generator("transformers", str(tiny_dir), batch_size=2)
    assert isinstance(gen, TransformersGenerator)
    yield gen
    gen.close()


# --------------------------------------------------------------------------- generation


def test_progress_is_reported_per_batch(generator):
    """What every backend promises is in test_generation_contract.py; this one is the
    transformers backend's own: a progress step per batch of ``batch_size`` prompts."""
    progress: list[int] = []
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=4, seed=7)
    out = generator.generate(PROMPTS, params, on_progress=progress.append)
    assert progress == [2, 2, 1]
    # A random 384-token model essentially never says eos in 4 tokens.
    assert {(c.finish_reason, c.num_tokens) for samples in out for c in samples} == {("length", 4)}


def test_generation_leaves_the_callers_rng_alone(generator):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generator.generate(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=3))
    assert torch.equal(torch.rand(3), expected)


def test_system_message_changes_the_prompt(generator):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    plain = generator.generate(PROMPTS[:1], params)
    with_system = generator.generate(PROMPTS[:1], params, system="Answer in French, please.")
    assert len(with_system) == 1 and len(with_system[0]) == 1
    rendered = generator._tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "system" in rendered  # the template does carry a system turn
    assert plain[0][0].finish_reason == with_system[0][0].finish_reason == "length"


def test_stop_finish_reason_and_eos_from_generation_config(tiny_dir, tmp_path):
    """Make the model's first greedy token an end-of-turn token (as chat models list extra
    eos ids in generation_config.json): generation must stop there, with nothing to decode."""
    gen = make_generator("transformers", str(tiny_dir))
    first = gen.generate(["hi"], SamplingParams(temperature=0.0, max_new_tokens=1))[0][0]
    gen.close()
    first_id = gen._tokenizer(first.text, add_special_tokens=False)["input_ids"][0]

    copy = Path(shutil.copytree(tiny_dir, tmp_path / "stops"))
    config = json.loads((copy / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], first_id]
    (copy / "generation_config.json").write_text(json.dumps(config))

    gen = make_generator("transformers", str(copy))
    out = gen.generate(["hi"], SamplingParams(n=2, temperature=0.0, max_new_tokens=8))
    gen.close()
    assert out == [[Completion(text="", finish_reason="stop", num_tokens=1)] * 2]


def test_max_model_len_is_enforced(tiny_dir):
    gen = make_generator("transformers", str(tiny_dir), max_model_len=24)
    with pytest.raises(ValueError, match="prompt 0 has"):
        gen.generate([PROMPTS[2]], SamplingParams(max_new_tokens=8))
    gen.close()
    with pytest.raises(RuntimeError, match="close"):
        gen.generate(["hi"], SamplingParams())


def test_unknown_backend_and_missing_model():
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_generator("tgi", "org/model")
    with pytest.raises(ValueError, match="base_url"):
        make_generator("openai", "served-name")
    with pytest.raises(ValueError, match="does not exist"):
        make_generator("transformers", "./no/such/model")


def test_vllm_backend_without_vllm_says_how_to_install(tiny_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gpu"):
            make_generator("vllm", str(tiny_dir))
    else:
        pytest.skip("vllm is installed here; tests/gpu covers it")


class _StandInVLLM:
    """vLLM's offline API as the vllm backend uses it, with the rules of vLLM's own
    SamplingParams that a caller can break (for the machines without a GPU; the contract
    suite runs the real one under ``gpu``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int, int]] = []  # (last message, n, seed)
        stand_in = self

        class SamplingParams:
            def __init__(self, *, n, temperature, top_p, max_tokens, seed):
                if temperature == 0 and n > 1:
                    raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
                self.n, self.max_tokens, self.seed = n, max_tokens, seed

        class LLM:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

            def chat(self, conversations, *, sampling_params, use_tqdm):
                outputs = []
                for conversation, sp in zip(conversations, sampling_params, strict=True):
                    stand_in.requests.append((conversation[-1]["content"], sp.n, sp.seed))
                    choices = [
                        types.SimpleNamespace(
                            text=f"{sp.seed}/{j}",
                            finish_reason="length",
                            token_ids=[0] * sp.max_tokens,
                        )
                        for j in range(sp.n)
                    ]
                    outputs.append(types.SimpleNamespace(outputs=choices))
                return outputs

        self.module = types.SimpleNamespace(SamplingParams=SamplingParams, LLM=LLM)


def test_vllm_backend_asks_one_greedy_reply_and_a_seed_per_prompt(monkeypatch):
    from eva_runtime.backends.vllm_generator import VLLMGenerator

    vllm = _StandInVLLM()
    monkeypatch.setitem(sys.modules, "vllm", vllm.module)
    gen = VLLMGenerator("some/model")
    greedy = gen.generate(["a", "b"], SamplingParams(n=3, temperature=0.0, max_new_tokens=2))
    assert [len(samples) for samples in greedy] == [3, 3]
    assert all(samples[0] == samples[1] == samples[2] for samples in greedy)
    assert [n for _, n, _ in vllm.requests] == [1, 1]
    vllm.requests.clear()
    sampled = gen.generate(["a", "b"], SamplingParams(n=2, temperature=1.0, seed=5))
    assert [n for _, n, _ in vllm.requests] == [2, 2]
    assert len({seed for _, _, seed in vllm.requests}) == 2  # each prompt its own seed
    assert sampled[0][0] != sampled[0][1]
    gen.close()


@pytest.mark.parametrize(
    "params",
    [dict(n=0), dict(temperature=-1.0), dict(top_p=0.0), dict(max_new_tokens=0)],
)
def test_sampling_params_are_validated(params):
    with pytest.raises(ValueError):
        SamplingParams(**params)


# --------------------------------------------------------------------------- classifier


RESPONSES = [
    "The sea sings.",
    "Hello! How can I help you today? I can write, explain and list things.",
    "Because of Rayleigh scattering.",
    "Paris.",
    "Boil tomatoes, add salt, blend, and serve the soup hot with some bread on the side.",
]


def _without_config_pad(classifier_dir: Path, tmp_path: Path) -> Path:
    """The same weights with config.pad_token_id unset, as many reward checkpoints ship."""
    copy = Path(shutil.copytree(classifier_dir, tmp_path / "nopad"))
    config = json.loads((copy / "config.json").read_text())
    config.pop("pad_token_id", None)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("variant", ["as_built", "config_without_pad"])
def test_classifier_scores_do_not_depend_on_batch_size(variant, classifier_dir, tmp_path):
    path = (
        classifier_dir if variant == "as_built" else _without_config_pad(classifier_dir, tmp_path)
    )
    one = make_reward_model("classifier", model=str(path), batch_size=1)
    four = make_reward_model("classifier", model=str(path), batch_size=4)
    assert isinstance(one, RewardModel)
    progress: list[int] = []
    single = one.score(PROMPTS, RESPONSES)
    batched = four.score(PROMPTS, RESPONSES, on_progress=progress.append)
    assert sum(progress) == len(PROMPTS)
    assert all(math.isfinite(s) for s in single)
    assert len(set(single)) == len(single)  # different texts, different scores
    assert batched == pytest.approx(single, abs=1e-4)
    one.close()
    four.close()


def test_classifier_truncation_keeps_the_end(classifier_dir):
    short = make_reward_model("classifier", model=str(classifier_dir), max_length=8)
    scores = short.score(PROMPTS, RESPONSES)
    assert all(math.isfinite(s) for s in scores)
    # Responses ending alike score alike once only the last 8 tokens are read.
    same_end = short.score(["a", "a completely different prompt"], ["x y z same end!"] * 2)
    assert same_end[0] == pytest.approx(same_end[1], abs=1e-5)


def test_non_finite_scores_are_refused(classifier_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "nan_rm"
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(classifier_dir).save_pretrained(broken)
    rm = make_reward_model("classifier", model=str(broken))
    with pytest.raises(ValueError, match=r"non-finite score .* at index 0"):
        rm.score(PROMPTS, RESPONSES)


def test_pairs_must_line_up(classifier_dir):
    rm = make_reward_model("classifier", model=str(classifier_dir))
    with pytest.raises(ValueError, match="pair up"):
        rm.score(PROMPTS, RESPONSES[:2])


# --------------------------------------------------------------------------- armo

_ARMO_CODE = '''
from dataclasses import dataclass

import torch
from transformers import LlamaForSequenceClassification
from transformers.utils import ModelOutput


@dataclass
class ArmoLikeOutput(ModelOutput):
    """Shaped like ArmoRM's output: per-objective rewards first, the preference in .score."""

    rewards: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None


class TinyArmo(LlamaForSequenceClassification):
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        raw = out.logits
        return ArmoLikeOutput(rewards=raw - 1.0, logits=raw, score=raw[:, 0] * 10.0 + 3.0)
'''


@pytest.fixture(scope="module")
def armo_dir(classifier_dir, tmp_path_factory) -> Path:
    folder = Path(shutil.copytree(classifier_dir, tmp_path_factory.mktemp("armo") / "rm"))
    (folder / "modeling_tiny_armo.py").write_text(textwrap.dedent(_ARMO_CODE))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_tiny_armo.TinyArmo"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_armo_needs_trust_remote_code(armo_dir):
    with pytest.raises(ValueError, match=r"rewardModel\.trustRemoteCode: true"):
        make_reward_model("armo", model=str(armo_dir))


def test_armo_reads_the_score_attribute_of_custom_code(armo_dir, classifier_dir):
    plain = make_reward_model("classifier", model=str(classifier_dir)).score(PROMPTS, RESPONSES)
    armo = make_reward_model("armo", model=str(armo_dir), trust_remote_code=True, batch_size=3)
    scores = armo.score(PROMPTS, RESPONSES)
    assert scores == pytest.approx([s * 10.0 + 3.0 for s in plain], abs=1e-3)


def test_armo_falls_back_to_logits_without_score_attribute(classifier_dir):
    plain = make_reward_model("classifier", model=str(classifier_dir)).score(PROMPTS, RESPONSES)
    armo = make_reward_model("armo", model=str(classifier_dir), trust_remote_code=True)
    assert armo.score(PROMPTS, RESPONSES) == pytest.approx(plain, abs=1e-5)


@pytest.mark.gpu
def test_real_armorm_prefers_the_correct_answer():
    """Downloads the 8B ArmoRM: run with HF_HUB_OFFLINE=0 where the hub is reachable."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rm = make_reward_model("armo", model="RLHFlow/ArmoRM-Llama3-8B-v0.1", trust_remote_code=True)
    prompts = ["What is 2 + 2? Answer with the number."] * 2
    scores = rm.score(prompts, ["4", "5"])
    rm.close()
    assert scores[0] > scores[1]


# --------------------------------------------------------------------------- python


_REWARDS_MODULE = """
import math


def by_length(prompts, responses):
    return [float(len(r)) for r in responses]


def too_few(prompts, responses):
    return [1.0]


def with_nan(prompts, responses):
    return [1.0, math.nan] + [0.0] * (len(responses) - 2)


def with_text(prompts, responses):
    return [1.0, "2"] + [0.0] * (len(responses) - 2)


def not_a_list(prompts, responses):
    return "1.0"


def raises(prompts, responses):
    return {}["missing"]


class Scorer:
    @staticmethod
    def score(prompts, responses):
        return [1] * len(responses)


NOT_CALLABLE = 3
"""


@pytest.fixture
def rewards_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "eva_test_rewards.py").write_text(_REWARDS_MODULE)
    (tmp_path / "eva_test_broken.py").write_text("import surely_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "eva_test_rewards"


def test_python_reward_happy_path(rewards_module):
    rm = make_reward_model("python", function=f"{rewards_module}:by_length")
    progress: list[int] = []
    assert rm.score(["p", "q"], ["ab", "abcd"], on_progress=progress.append) == [2.0, 4.0]
    assert progress == [2]
    assert make_reward_model("python", function=f"{rewards_module}:Scorer.score").score(
        ["p"], ["r"]
    ) == [1.0]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("no_colon_here", "not of the form 'module:function'"),
        ("a:b:c", "not of the form"),
        ("eva_test_rewards:", "not of the form"),
        ("surely_not_a_module_xyz:f", "module 'surely_not_a_module_xyz' not found"),
        ("eva_test_broken:f", "surely_missing_dependency_xyz"),
        ("eva_test_rewards:missing", "has no attribute 'missing'"),
        ("eva_test_rewards:NOT_CALLABLE", "not callable"),
    ],
)
def test_python_reward_bad_references(function, message, rewards_module):
    with pytest.raises(ValueError, match=message):
        make_reward_model("python", function=function)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("too_few", "returned 1 scores for 3 responses"),
        ("with_nan", "returned nan at index 1"),
        ("with_text", "returned '2' at index 1"),
        ("not_a_list", "returned str"),
        ("raises", "raised KeyError: 'missing'"),
    ],
)
def test_python_reward_bad_results(name, message, rewards_module):
    rm = make_reward_model("python", function=f"{rewards_module}:{name}")
    with pytest.raises(ValueError, match=message) as err:
        rm.score(["a", "b", "c"], ["x", "y", "z"])
    assert f"{rewards_module}:{name}" in str(err.value)


def test_unknown_reward_type_and_missing_inputs():
    with pytest.raises(ValueError, match="unknown reward model type"):
        make_reward_model("bleu", model="x/y")
    with pytest.raises(ValueError, match="judge_generator"):
        make_reward_model("judge", model="x/y")
    with pytest.raises(ValueError, match="needs a model"):
        make_reward_model("classifier")
    with pytest.raises(ValueError, match="function"):
        make_reward_model("python")


# --------------------------------------------------------------------------- judge


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: 7", 7.0),
        ("rating:7/10", 7.0),
        ("7/10", 7.0),
        ("**8**", 8.0),
        ("**Rating:** 9\nThe answer is fine.", 9.0),
        ("I would give it 6 out of 10.", 6.0),
        ("Score = 10", 10.0),
        ("Rating: 8.5", 8.5),
        ("There are 3 issues, so 4/10.", 4.0),
        ("After review: 100 words, rating 2", 2.0),
        ("10", 10.0),
        ("  5.", 5.0),
        ("Rating: 0", None),
        ("Rating: 11", None),
        ("No rating, sorry.", None),
        ("GPT4 says v2.5", None),
        ("", None),
    ],
)
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_judge_with_the_tiny_model_is_finite_and_counts_unparsed(generator):
    assert isinstance(make_reward_model("judge", judge_generator=generator), JudgeReward)
    judge = JudgeReward(generator, max_new_tokens=8)  # a short reply keeps the test quick
    progress: list[int] = []
    scores = judge.score(PROMPTS[:3], RESPONSES[:3], on_progress=progress.append)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert all(1.0 <= s <= 10.0 for s in scores)
    assert sum(progress) == 3
    # A random model rarely writes a rating: those pairs were retried, then fell back.
    assert judge.unparsed == sum(s == JUDGE_FALLBACK_SCORE for s in scores)
    assert judge.unparsed >= 1 and judge.retried >= judge.unparsed
    judge.close()


class _ScriptedJudge:
    """Stands in for a judge LLM (a dependency, not code under test): replies in order."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.seen: list[tuple[list[str], SamplingParams]] = []

    def generate(self, prompts, params, *, system=None, on_progress=None):
        self.seen.append((list(prompts), params))
        out = [[Completion(self.replies.pop(0), "stop", 3)] for _ in prompts]
        if on_progress is not None:
            on_progress(len(prompts))
        return out

    def close(self) -> None:
        pass


def test_judge_retries_once_then_falls_back():
    llm = _ScriptedJudge(["Rating: 9", "I cannot say.", "hmm", "7/10", "still no"])
    judge = JudgeReward(llm)
    assert judge.score(["p1", "p2", "p3"], ["r1", "r2", "r3"]) == [9.0, 7.0, JUDGE_FALLBACK_SCORE]
    assert (judge.retried, judge.unparsed) == (2, 1)
    first, retry = llm.seen
    assert "p2" in retry[0][0] and "r3" in retry[0][1] and len(retry[0]) == 2
    assert first[1].temperature == 0.0 and first[1].n == 1
    assert "p1" in first[0][0] and "r1" in first[0][0]
