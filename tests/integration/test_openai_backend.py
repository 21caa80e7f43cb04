"""The openai backend against a real OpenAI-compatible server, ``transformers serve``
(``tests/transformers_serve.py``): what is the openai backend's own (the fallback for a
server that ignores ``n``, the server's errors) and the judges through it. What every backend
promises is in ``test_generation_contract.py``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.backends import (
    BackendError,
    Completion,
    SamplingParams,
    make_generator,
)
from eva_runtime.backends.openai_generator import OpenAIGenerator
from transformers_serve import free_port


def test_n_samples_per_prompt_with_a_server_that_ignores_n(served_model):
    base_url, model = served_model
    gen = make_generator("openai", model, base_url=base_url, batch_size=3)
    assert isinstance(gen, OpenAIGenerator)
    progress: list[int] = []
    prompts = ["Write a short poem about the sea.", "hi", "List three uses of a paper clip."]
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=11)
    out = gen.generate(prompts, params, on_progress=progress.append)
    gen.close()

    assert gen.n_supported is False  # the server answered n=3 with a single choice
    assert len(out) == len(prompts) and all(len(samples) == 3 for samples in out)
    assert sum(progress) == len(prompts)
    for samples in out:
        for c in samples:
            assert isinstance(c, Completion) and isinstance(c.text, str)
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.num_tokens <= 6
    # Each sample was its own request with its own seed: they are not copies of each other.
    assert any(len({c.text for c in samples}) > 1 for samples in out)


def test_greedy_asks_once_per_prompt_however_many_samples(served_model):
    """Greedy samples are one reply: asked once, repeated. Asking for n > 1 would be refused
    by servers that check it (vLLM: "n must be 1 when using greedy sampling") and would
    mark n as unsupported for the sampled requests that follow."""
    base_url, model = served_model
    gen = make_generator("openai", model, base_url=base_url)
    assert isinstance(gen, OpenAIGenerator)
    out = gen.generate(["hi", "there"], SamplingParams(n=3, temperature=0.0, max_new_tokens=3))
    gen.close()
    assert [len(samples) for samples in out] == [3, 3]
    assert gen.n_supported is None  # n > 1 was never asked for


def test_wrong_model_name_is_reported_with_the_server(served_model):
    base_url, _ = served_model
    gen = OpenAIGenerator("not/the-served-model", base_url=base_url, max_retries=0)
    with pytest.raises(BackendError) as err:
        gen.generate(["hi"], SamplingParams(max_new_tokens=2))
    assert base_url in str(err.value) and "400" in str(err.value)


def test_unreachable_server_is_a_clear_error():
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    gen = OpenAIGenerator("m", base_url=base_url, max_retries=1)
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach") as err:
        gen.generate(["hi", "there"], SamplingParams(n=2, max_new_tokens=2))
    assert base_url in str(err.value)
    assert time.monotonic() - started < 30


def test_eva_bench_with_transformers_serve_as_the_judge(served_model, tmp_path):
    """The endpoint judge end to end against a real server: the tiny model answers and a
    served tiny model judges. Its replies hold no ``[[rating]]``: every one is asked again
    (parse retries), then excluded and counted; nothing is guessed and nothing crashes."""
    from click.testing import CliRunner

    from eva_runtime.cli import main

    base_url, model = served_model
    data = Path(__file__).parents[2] / "manifests" / "examples" / "data" / "bench"
    args = [
        "bench", "mt-bench", "--model", model,
        "--questions", str(data / "mt-bench-questions.jsonl"),
        "--limit", "2", "--judge-base-url", base_url, "--judge-model", model,
        "--judge-max-new-tokens", "12", "--max-new-tokens", "8", "--parse-retries", "1",
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    last = json.loads(result.stdout.strip().splitlines()[-1])
    # Exit 0 with a score; 1 (the JSON line still printed) when nothing could be judged.
    assert result.exit_code == (0 if last["judged"] else 1), result.output
    assert last["suite"] == "mt-bench" and last["questions"] == 2
    assert last["judged"] + last["excluded"] == 4 and last["errors"] == 0
    records = [
        json.loads(x) for x in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()
    ]
    # One ask per grading, a second only for the unparseable ones; every reply kept.
    assert len(records) == 4 + last["excluded"]
    assert all(
        isinstance(r["reply"], str) and r["judge"] == f"{model} at {base_url}" for r in records
    )
    if last["judged"] == 0:
        assert last["score"] is None


def test_the_pairwise_judge_reward_through_transformers_serve(served_model):
    """The judge-pairwise reward against the real server: every pair is asked in both orders
    (and asked again when the reply has no verdict, which the random tiny model never
    writes), and each reply that stays without one is a tie, counted."""
    from eva_runtime.backends.pairwise import JudgePreference, PairwiseReward

    base_url, model = served_model
    gen = make_generator("openai", model, base_url=base_url, batch_size=4)
    judge = JudgePreference(gen, max_new_tokens=8)
    reward = PairwiseReward(judge)
    scores = reward.score(["Name a colour."] * 3, ["Blue.", "Red, like a rose.", "7"])
    gen.close()
    assert reward.comparisons == 6
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert sum(scores) == pytest.approx(1.5)  # mean win probabilities of 3 responses
    if judge.unparsed == 6:
        assert scores == [0.5, 0.5, 0.5]
