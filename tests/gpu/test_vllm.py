"""The vllm backend on a real GPU with a small chat model.

Needs a CUDA GPU, vLLM (the ``gpu`` extra) and the model: by default the hub's
SmolLM2-135M-Instruct, so run with ``HF_HUB_OFFLINE=0 pytest -m gpu`` where the hub is
reachable, or point ``EVA_TEST_VLLM_MODEL`` at a local copy (a folder, a .gguf or pkg://).
"""

from __future__ import annotations

import dataclasses
import os

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

if not torch.cuda.is_available():  # pragma: no cover - only on machines without a GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from eva_runtime.backends import SamplingParams, make_generator  # noqa: E402

MODEL = os.environ.get("EVA_TEST_VLLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "Say hi."]


@pytest.fixture(scope="module")
def generator():
    gen = make_generator("vllm", MODEL, max_model_len=2048)
    yield gen
    gen.close()


def test_shapes_finish_reasons_and_progress(generator):
    progress: list[int] = []
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=4, seed=1)
    out = generator.generate(PROMPTS, params, on_progress=progress.append)
    assert len(out) == len(PROMPTS) and all(len(samples) == 3 for samples in out)
    assert sum(progress) == len(PROMPTS)
    assert {c.finish_reason for samples in out for c in samples} <= {"stop", "length"}
    assert any(c.finish_reason == "length" for samples in out for c in samples)
    assert all(1 <= c.num_tokens <= 4 for samples in out for c in samples)


def test_seeded_sampling_is_reproducible(generator):
    params = SamplingParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=5)
    first = generator.generate(PROMPTS, params)
    assert generator.generate(PROMPTS, params) == first
    other = generator.generate(PROMPTS, dataclasses.replace(params, seed=6))
    assert other != first


def test_a_real_chat_model_answers_and_stops(generator):
    out = generator.generate(
        ["What is the capital of France? Answer in one word."],
        SamplingParams(temperature=0.0, max_new_tokens=64),
        system="You are a concise assistant.",
    )
    answer = out[0][0]
    assert "paris" in answer.text.lower()
    assert answer.finish_reason == "stop"
