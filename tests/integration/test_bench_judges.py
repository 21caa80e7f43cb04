"""``eva bench`` end to end with the tiny model answering and a local judge server that
misbehaves on purpose: failures, timeouts, garbage and 429s cost retries and counted
exclusions, never a crash or a lost judgment; a killed benchmark resumes asking the judge
only for what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.bench.judge import EndpointJudge, JsonlStore, judge_all
from eva_runtime.bench.scoring import parse_verdict
from eva_runtime.cli import main
from judge_stub import always, judge_stub

DATA = Path(__file__).parents[2] / "manifests" / "examples" / "data" / "bench"
ARENA = ["--questions", str(DATA / "arena-hard-questions.jsonl"),
         "--answers", str(DATA / "arena-hard-baseline.jsonl")]  # fmt: skip


def _bench(args: list[str]) -> tuple[int, dict | None, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVA_SPEC_YAML",)}
    result = CliRunner(env=env).invoke(main, ["bench", *args])
    out = result.stdout.strip().splitlines()
    last = json.loads(out[-1]) if result.exit_code == 0 and out else None
    return result.exit_code, last, result.output


def _common(tiny_model: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(tiny_model), "--judge-base-url", url, "--judge-model", "judge",
        "--out", str(out), "--max-new-tokens", "8", "--max-retries", "1", *extra,
    ]  # fmt: skip


def _is_arena(body: dict) -> bool:
    return "[Answer of assistant A]" in body["messages"][-1]["content"]


def test_each_suite_scores_with_one_command(tiny_model: Path, tmp_path: Path) -> None:
    def reply(body: dict, n: int) -> tuple[int, str, float]:
        user = body["messages"][-1]["content"]
        if _is_arena(body):
            return 200, "Both are short. My final verdict: [[A>B]]", 0.0
        if "[Output (a)]" in user:
            return 200, "[[b]]", 0.0
        return 200, "Adequate. Rating: [[4]]", 0.0

    with judge_stub(reply) as stub:
        code, arena, out = _bench(
            ["arena-hard", *ARENA, *_common(tiny_model, stub.url, tmp_path / "a")]
        )
        assert code == 0, out
        # A judge that always prefers the first answer: every question's two games cancel.
        assert arena["score"] == 50.0 and arena["judged"] == 12 and arena["excluded"] == 0
        assert {"suite", "score", "ci_low", "ci_high", "judged", "excluded"} <= set(arena)
        code, mt, out = _bench(["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl"),
                                "--answers", str(DATA / "mt-bench-reference.jsonl"),
                                *_common(tiny_model, stub.url, tmp_path / "m")])  # fmt: skip
        assert code == 0, out
        assert mt["score"] == 4.0 and mt["turn_1"] == 4.0 and mt["turn_2"] == 4.0
        assert mt["judged"] == 16
        code, alp, out = _bench(["alpaca-eval", "--questions", str(DATA / "alpaca-eval.json"),
                                 *_common(tiny_model, stub.url, tmp_path / "e")])  # fmt: skip
        assert code == 0, out
        assert alp["judged"] == 6 and 0 <= alp["win_rate"] <= 100
    # MT-Bench's second turn saw the first: the turn-2 grading prompt holds the conversation.
    turn2 = [r for r in stub.requests if "[Conversation]" in r["messages"][-1]["content"]]
    assert len(turn2) == 8
    # A reference answer is shown for math, reasoning and coding only (the three given).
    with_ref = [r for r in stub.requests if "[Reference answer]" in r["messages"][-1]["content"]]
    assert len(with_ref) == 6
    # Positions randomised in alpaca-eval: a judge that always says b gives neither 0 nor 100.
    assert 0 < alp["win_rate"] < 100
    # Every judgment was stored with its prompt, reply, verdict and judge.
    records = [json.loads(x) for x in (tmp_path / "a" / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert all(r["parsed"] == "A>B" and r["judge"].startswith("judge at ") for r in records)
    assert all(r["prompt"][0]["role"] == "system" for r in records)
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert len(result["details"]) == 6 and result["details"][0]["answer"] is not None


def test_rerunning_costs_nothing(tiny_model: Path, tmp_path: Path) -> None:
    with judge_stub(always("[[B>A]]")) as stub:
        args = ["arena-hard", *ARENA, *_common(tiny_model, stub.url, tmp_path / "o")]
        code, first, out = _bench(args)
        assert code == 0, out
        asked = len(stub.requests)
        code, again, out = _bench(args)
        assert code == 0, out
        assert len(stub.requests) == asked == 12
        assert again["score"] == first["score"]
        answers = (tmp_path / "o" / "answers.jsonl").read_text().splitlines()
        assert len(answers) == 6  # the model did not answer again either


def test_garbage_replies_are_retried_then_excluded_and_counted(
    tiny_model: Path, tmp_path: Path
) -> None:
    def reply(body: dict, n: int) -> tuple[int, str, float]:
        user = body["messages"][-1]["content"]
        if "Write a Python function" in user:
            return 200, "I cannot decide, both are fine.", 0.0  # never a verdict
        if "two-sentence apology" in user and body["temperature"] == 0:
            return 200, "Hmm [[A>B]] or [[B>A]]", 0.0  # contradictory, then fine on retry
        return 200, "[[A=B]]", 0.0

    with judge_stub(reply) as stub:
        code, result, out = _bench(
            [
                "arena-hard",
                *ARENA,
                *_common(tiny_model, stub.url, tmp_path / "g"),
                "--parse-retries",
                "2",
            ]
        )
        assert code == 0, out
    # ah-1's two games: 3 asks each, then excluded; ah-2's two games: 2 asks each.
    assert result["excluded"] == 2 and result["judged"] == 10 and result["errors"] == 0
    assert len(stub.requests) == 2 * 3 + 2 * 2 + 4 * 2
    assert result["score"] == 50.0  # ties only among what was judged: nothing guessed
    lines = (tmp_path / "g" / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == len(stub.requests)  # every reply kept, the unparseable ones too
    assert "unparseable" in out


def test_429_500_and_timeouts_are_retried_and_failures_counted(
    tiny_model: Path, tmp_path: Path
) -> None:
    seen: dict[str, int] = {}

    def reply(body: dict, n: int) -> tuple[int, str | None, float]:
        user = body["messages"][-1]["content"]
        key = user[:200] + str(body["messages"][-1]["content"][-40:])
        seen[key] = seen.get(key, 0) + 1
        if "Fibonacci" in user:
            return 500, None, 0.0  # always failing
        if "average speed" in user:
            return 200, "[[A>B]]", 5.0  # slower than the timeout
        if "bloops" in user and seen[key] == 1:
            return 429, None, 0.0  # rate limited once, then fine
        if "sky looks blue" in user:
            return 200, None, 0.0  # not JSON at all
        return 200, "[[B>A]]", 0.0

    with judge_stub(reply) as stub:
        args = [
            "arena-hard",
            *ARENA,
            *_common(tiny_model, stub.url, tmp_path / "f"),
            "--timeout",
            "1",
        ]
        code, result, out = _bench(args)
        assert code == 0, out
        # Fibonacci (500), speed (timeout), sky (not JSON): 2 games each fail after retries.
        assert result["errors"] == 6 and result["judged"] == 6 and result["excluded"] == 0
        records = [
            json.loads(x) for x in (tmp_path / "f" / "judgments.jsonl").read_text().splitlines()
        ]
        assert sum(r["status"] == "error" for r in records) == 6
        assert any("HTTP 500" in r["error"] for r in records if r["status"] == "error")
        assert any("timed out" in r["error"] for r in records if r["status"] == "error")
        before = len(stub.requests)
        # A rerun asks again only for the failed ones.
        code, again, out = _bench(args)
        assert code == 0, out
        assert again["judged"] == 6
        assert stub.requests[before:] and all(
            any(
                k in r["messages"][-1]["content"]
                for k in ("Fibonacci", "average speed", "sky looks blue")
            )
            for r in stub.requests[before:]
        )


def test_judge_all_resumes_from_a_store_cut_mid_line(tmp_path: Path) -> None:
    """What a kill leaves: a last line cut short. It is dropped and asked again."""
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    with judge_stub(always("[[A>>B]]")) as stub:
        judge = EndpointJudge("j", stub.url, max_retries=0)
        store = JsonlStore(tmp_path / "j.jsonl")
        judge_all(judge, store, prompts, parse_verdict)
        assert len(stub.requests) == 5
        data = (tmp_path / "j.jsonl").read_bytes()
        lines = data.splitlines(keepends=True)
        (tmp_path / "j.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:20])
        outcomes = judge_all(judge, JsonlStore(tmp_path / "j.jsonl"), prompts, parse_verdict)
        assert len(stub.requests) == 7  # the cut one and the lost one
        assert [o.parsed for o in outcomes] == ["A>>B"] * 5
        judge.close()
    (tmp_path / "bad.jsonl").write_text('{"key": "x"}\nnot json\n{"key": "y"}\n')
    from eva_runtime.errors import InputError

    with pytest.raises(InputError, match=r"bad.jsonl:2: not a record"):
        JsonlStore(tmp_path / "bad.jsonl")


def test_a_killed_benchmark_resumes_asking_only_what_is_missing(
    tiny_model: Path, tmp_path: Path
) -> None:
    def reply(body: dict, n: int) -> tuple[int, str, float]:
        return 200, "[[B>A]]", 0.4  # slow enough to kill in the middle

    with judge_stub(reply) as stub:
        out = tmp_path / "k"
        args = ["arena-hard", *ARENA, *_common(tiny_model, stub.url, out), "--concurrency", "1"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "eva_runtime.cli", "bench", *args],
            stdout=subprocess.DEVNULL,  # nobody reads a pipe until the kill: it could fill
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and len(stub.requests) < 5:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = len((out / "judgments.jsonl").read_text().splitlines())
        assert 3 <= kept < 12
        asked = len(stub.requests)
        code, result, output = _bench(args)
        assert code == 0, output
        assert result["judged"] == 12
        # Only the missing ones were asked (one in flight at the kill may be asked again).
        assert len(stub.requests) - asked <= 12 - kept
        assert len(stub.requests) - asked >= 12 - kept - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["arena-hard", "--questions", str(DATA / "arena-hard-questions.jsonl")],
            "needs --answers",
        ),
        (["mt-bench", "--questions", "/nope.jsonl"], "/nope.jsonl: no such file"),
        (
            ["alpaca-eval", "--questions", str(DATA / "mt-bench-questions.jsonl")],
            "instruction must be text",
        ),
        (["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl")], "a judge is needed"),
        (
            ["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl"), "--style-control"],
            "--style-control: only arena-hard",
        ),
        (
            [
                "mt-bench",
                "--questions",
                str(DATA / "mt-bench-questions.jsonl"),
                "--judge-base-url",
                "ftp://x",
                "--judge-model",
                "m",
            ],
            "must start with http",
        ),
        (
            [
                "mt-bench",
                "--questions",
                str(DATA / "mt-bench-questions.jsonl"),
                "--judge-base-url",
                "http://x/v1",
                "--judge-model",
                "m",
                "--judge-api-key-env",
                "EVA_TEST_UNSET_KEY",
            ],
            "EVA_TEST_UNSET_KEY is not set",
        ),
    ],
)
def test_user_errors_are_one_clear_line(tiny_model: Path, args: list[str], message: str) -> None:
    if "--judge-base-url" not in args and "a judge" not in message:
        args = [*args, "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    code, _, out = _bench([*args, "--model", str(tiny_model)])
    assert code == 2, out
    assert message in out and "Traceback" not in out


def test_nothing_judged_exits_1_with_the_json_line(tiny_model: Path, tmp_path: Path) -> None:
    with judge_stub(lambda body, n: (503, None, 0.0)) as stub:
        args = ["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl"), "--limit", "2",
                *_common(tiny_model, stub.url, tmp_path / "n"), "--max-retries", "0"]  # fmt: skip
        result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 1, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert (last["judged"], last["errors"], last["score"]) == (0, 4, None)
    assert "4 judge requests failed after retries (first: HTTP 503" in result.output


def test_damaged_stores_and_unloadable_models_are_named(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "d" / "judgments.jsonl").mkdir(parents=True)
    args = ["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl"),
            *_common(tiny_model, "http://127.0.0.1:9/v1", tmp_path / "d")]  # fmt: skip
    code, _, out = _bench(args)
    assert code == 2 and "judgments.jsonl: cannot be read (Is a directory)" in out
    assert "answering" not in out  # refused before any model was loaded
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    args = ["mt-bench", "--questions", str(DATA / "mt-bench-questions.jsonl"), "--model",
            str(missing), "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
            "--out", str(tmp_path / "e")]  # fmt: skip
    code, _, out = _bench(args)
    assert code == 2 and f"--model {missing}" in out and "Traceback" not in out


def test_model_from_a_run_directory(tmp_path: Path) -> None:
    from eva_runtime.bench.cli import resolve_policy
    from eva_runtime.errors import InputError

    with pytest.raises(InputError, match="is not a run directory"):
        resolve_policy(f"{tmp_path}:2")
    with pytest.raises(InputError, match="--model"):
        resolve_policy(str(tmp_path / "missing-folder"))


def test_a_local_judge_model(tiny_model: Path, tmp_path: Path) -> None:
    """--judge-model-path: the judge runs in this process through the transformers backend.
    The random tiny model writes no verdict: each reply is kept and counted as unparseable."""
    args = ["alpaca-eval", "--questions", str(DATA / "alpaca-eval.json"), "--limit", "2",
            "--model", str(tiny_model), "--judge-model-path", str(tiny_model),
            "--judge-max-new-tokens", "6", "--max-new-tokens", "6", "--parse-retries", "1",
            "--backend", "transformers", "--out", str(tmp_path / "l")]  # fmt: skip
    result = CliRunner().invoke(main, ["bench", *args])
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == (0 if last["judged"] else 1), result.output
    assert last["judge"] == f"local:{tiny_model}"
    assert last["judged"] + last["excluded"] == 2 and last["errors"] == 0
    lines = (tmp_path / "l" / "judgments.jsonl").read_text().splitlines()
    assert len(lines) == 2 + last["excluded"]  # one retry for each unparseable reply
    code, _, out = _bench([*args, "--judge-base-url", "http://127.0.0.1:9/v1"])
    assert code == 2 and "not both" in out
