"""What every generation backend promises (the ``Generator`` protocol), one suite run on each.

- ``transformers``: in this process, on the tiny random model, in batches of 2;
- ``openai``: against a real OpenAI-compatible server, ``transformers serve`` on the tiny
  model (``tests/transformers_serve.py``), one request at a time (concurrency is the openai
  backend's own test);
- ``vllm``: on a CUDA GPU (marked ``gpu``), with ``EVA_TEST_VLLM_MODEL`` (default the hub's
  SmolLM2-135M-Instruct; a local folder where the hub is out of reach).

What only one backend does (its padding, its RNG, its server's errors) stays in that backend's
own tests: ``test_backends.py``, ``test_openai_backend.py``, ``tests/gpu/test_vllm.py``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.backends import Completion, Generator, SamplingParams, make_generator

PROMPTS = [
    "Write a short poem about the sea and the wind.",
    "hi",
    "Explain why the sky is blue in two sentences, then list three uses of a paper clip.",
    "What is the capital of France?",
    "Give me a recipe for a simple tomato soup.",
]
CONVERSATION = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]
VLLM_MODEL = os.environ.get("EVA_TEST_VLLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")


@dataclass
class Backend:
    name: str
    gen: Generator
    # Greedy outputs do not depend on which prompts share a batch. vLLM's batched kernels
    # give no such promise (their sums run in another order), so it is not asked of vLLM.
    batch_invariant: bool
    # Tokens enough that two seeds surely sample different text (a real chat model's
    # replies start alike more often than the random tiny model's).
    sample_tokens: int


def _transformers(tiny_model: Path) -> Backend:
    gen = make_generator("transformers", str(tiny_model), batch_size=2)
    return Backend("transformers", gen, batch_invariant=True, sample_tokens=6)


def _openai(served: tuple[str, str]) -> Backend:
    base_url, model = served
    # One request in flight: transformers serve seeds one RNG for the whole server, so
    # concurrent requests would draw from it in whatever order they interleave. (Servers
    # that keep a generator per request, vLLM's, reproduce seeds at any concurrency.)
    gen = make_generator("openai", model, base_url=base_url, batch_size=1)
    return Backend("openai", gen, batch_invariant=True, sample_tokens=6)


def _vllm() -> Backend:
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = make_generator("vllm", VLLM_MODEL, max_model_len=2048)
    return Backend("vllm", gen, batch_invariant=False, sample_tokens=24)


@pytest.fixture(
    scope="module", params=["transformers", "openai", pytest.param("vllm", marks=pytest.mark.gpu)]
)
def backend(request, tiny_model) -> Iterator[Backend]:
    if request.param == "transformers":
        made = _transformers(tiny_model)
    elif request.param == "openai":
        made = _openai(request.getfixturevalue("served_model"))
    else:
        made = _vllm()
    yield made
    made.gen.close()


def _well_formed(c: Completion, max_new_tokens: int) -> None:
    assert isinstance(c, Completion) and isinstance(c.text, str)
    assert c.finish_reason in ("stop", "length"), c
    assert 0 <= c.num_tokens <= max_new_tokens, c
    if c.finish_reason == "length":
        assert c.num_tokens == max_new_tokens, c


def test_n_completions_for_each_prompt_and_progress_that_adds_up(backend):
    progress: list[int] = []
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=4, seed=7)
    out = backend.gen.generate(PROMPTS, params, on_progress=progress.append)
    assert isinstance(backend.gen, Generator)
    assert len(out) == len(PROMPTS) and all(len(samples) == 3 for samples in out)
    for samples in out:
        for c in samples:
            _well_formed(c, 4)
    assert sum(progress) == len(PROMPTS) and all(k >= 1 for k in progress)
    # Cut at 4 tokens, some reply is surely unfinished.
    assert any(c.finish_reason == "length" for samples in out for c in samples)


def test_no_prompts_no_completions(backend):
    progress: list[int] = []
    assert backend.gen.generate([], SamplingParams(n=2), on_progress=progress.append) == []
    assert sum(progress) == 0


def test_the_same_seed_gives_the_same_samples_another_seed_others(backend):
    prompts = PROMPTS[:3]
    params = SamplingParams(
        n=2, temperature=1.0, top_p=1.0, max_new_tokens=backend.sample_tokens, seed=3
    )
    first = backend.gen.generate(prompts, params)
    assert backend.gen.generate(prompts, params) == first
    assert backend.gen.generate(prompts, dataclasses.replace(params, seed=4)) != first
    # The n samples of a prompt are samples, not copies of one.
    assert any(len({c.text for c in samples}) > 1 for samples in first)


def test_greedy_gives_n_identical_samples_and_the_same_again(backend):
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=5)
    out = backend.gen.generate(PROMPTS[:3], params)
    assert len(out) == 3
    for samples in out:
        assert len(samples) == 3 and samples[0] == samples[1] == samples[2]
        _well_formed(samples[0], 5)
    assert backend.gen.generate(PROMPTS[:3], dataclasses.replace(params, seed=99)) == out


def test_greedy_in_a_batch_equals_one_prompt_at_a_time(backend):
    """Prompts of very different lengths share a batch; a backend that padded them wrongly
    (or mixed up their order) would change the short ones' greedy replies."""
    if not backend.batch_invariant:
        pytest.skip(f"{backend.name} does not promise batch-invariant greedy decoding")
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    batched = backend.gen.generate(PROMPTS, params)
    assert batched == [backend.gen.generate([p], params)[0] for p in PROMPTS]


def test_a_conversation_and_a_system_message_are_prompts(backend):
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=4, seed=1)
    out = backend.gen.generate([CONVERSATION, "hi"], params, system="Answer in one word.")
    assert len(out) == 2 and all(len(samples) == 2 for samples in out)
    for samples in out:
        for c in samples:
            _well_formed(c, 4)


def test_a_closed_backend_refuses_to_generate(backend):
    """Last in the module (it closes the module's backend): close is final and idempotent."""
    backend.gen.close()
    with pytest.raises(RuntimeError, match="close"):
        backend.gen.generate(["hi"], SamplingParams(max_new_tokens=2))
    backend.gen.close()
