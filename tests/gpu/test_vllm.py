"""The vllm backend on a real GPU with a small chat model: that a real model answers.

What every backend promises (shapes, seeds, greedy) is checked on vLLM too, by
``tests/integration/test_generation_contract.py`` under ``gpu``.

Needs a CUDA GPU, vLLM (the ``gpu`` extra) and the model: by default the hub's
SmolLM2-135M-Instruct, so run with ``HF_HUB_OFFLINE=0 pytest -m gpu`` where the hub is
reachable, or point ``EVA_TEST_VLLM_MODEL`` at a local copy (a folder, a .gguf or pkg://).
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

if not torch.cuda.is_available():  # pragma: no cover - only on machines without a GPU
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from eva_runtime.backends import SamplingParams, make_generator  # noqa: E402

MODEL = os.environ.get("EVA_TEST_VLLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def generator():
    gen = make_generator("vllm", MODEL, max_model_len=2048)
    yield gen
    gen.close()


def test_a_real_chat_model_answers_and_stops(generator):
    out = generator.generate(
        ["What is the capital of France? Answer in one word."],
        SamplingParams(temperature=0.0, max_new_tokens=64),
        system="You are a concise assistant.",
    )
    answer = out[0][0]
    assert "paris" in answer.text.lower()
    assert answer.finish_reason == "stop"
