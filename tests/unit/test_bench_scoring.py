"""The benchmark protocols' scoring against hand-computed cases, the reply parsers over messy
replies, and the file readers' errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from eva_runtime.bench import formats, scoring
from eva_runtime.bench.scoring import Battle, battle
from eva_runtime.errors import InputError

DATA = Path(__file__).parents[2] / "manifests" / "examples" / "data" / "bench"


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("My final verdict: [[A>B]]", "A>B"),
        ("After weighing both... [[B>>A]].", "B>>A"),
        ("tie: [[A=B]]", "A=B"),
        ("[[ A >> B ]]", "A>>B"),
        ("[[B<A]] since A is right", "A>B"),
        ("[[A<<B]]", "B>>A"),
        ("verdict [A>B]", "A>B"),  # single brackets as a fallback
        ("I first thought [[A>B]] but on reflection [[A>B]]", "A>B"),  # repeated, same
        ("[[A>B]] or maybe [[B>A]]", None),  # two verdicts: no guess
        ("A is better", None),
        ("[[A>A]]", None),
        ("[[C>B]]", None),
        ("", None),
        (None, None),
    ],
)
def test_verdict_parser(reply: str | None, verdict: str | None) -> None:
    assert scoring.parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Rating: [[7]]", 7.0),
        ("The answer is fine. [[8.5]]", 8.5),
        ("score [[ 10 ]]", 10.0),
        ("[6]", 6.0),
        ("[[11]]", None),  # out of the scale
        ("[[0]]", None),
        ("[[3]] ... [[9]]", None),
        ("Rating: 7", None),  # MT-Bench asks for [[rating]]; no bare numbers
        ("", None),
    ],
)
def test_mt_rating_parser(reply: str, rating: float | None) -> None:
    assert scoring.parse_mt_rating(reply) == rating


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("[[a]]", "a"),
        ("[[B]]", "b"),
        ("[[Output (b)]]", "b"),
        ("[[2]]", "b"),
        ("[[tie]]", "tie"),
        ("[[a]] [[b]]", None),
        ("a", None),
    ],
)
def test_choice_parser(reply: str, choice: str | None) -> None:
    assert scoring.parse_choice(reply) == choice


# --------------------------------------------------------------------------- arena-hard


def _games(verdicts: list[tuple[str, str]]) -> list[Battle]:
    """Per question (game 1 with the baseline as A, game 2 with the model as A)."""
    out = []
    for i, (g1, g2) in enumerate(verdicts):
        out += [battle(f"q{i}", g1, model_is_a=False), battle(f"q{i}", g2, model_is_a=True)]
    return out


def test_arena_all_wins_all_losses_all_ties() -> None:
    wins = scoring.arena_score(_games([("B>>A", "A>>B")] * 5))
    assert wins["score"] == 100.0 and wins["ci_low"] == 100.0
    losses = scoring.arena_score(_games([("A>B", "B>A")] * 5))
    assert losses["score"] == 0.0 and losses["ci_high"] == 0.0
    ties = scoring.arena_score(_games([("A=B", "A=B")] * 5))
    assert ties["score"] == 50.0 and ties["ci_low"] == ties["ci_high"] == 50.0


def test_a_judge_that_always_prefers_the_first_answer_scores_half() -> None:
    """Position bias cancels: game 1 the baseline wins, game 2 the model wins."""
    result = scoring.arena_score(_games([("A>>B", "A>>B"), ("A>B", "A>B"), ("A>>B", "A>>B")]))
    assert result["score"] == 50.0
    styled = scoring.arena_score(
        [
            Battle(b.question_id, b.y, b.weight, style=(0.3 * k, 0.0, 0.1, 0.0))
            for k, b in enumerate(_games([("A>B", "A>B")] * 4))
        ],
        style_control=True,
    )
    assert styled["score"] == pytest.approx(50.0, abs=1e-6)


def test_strong_verdicts_weigh_three_and_ties_half() -> None:
    # q0: model wins strongly twice (6 battles won); q1: a tie and a plain loss (0.5 + 0).
    # Weighted share won: (6 + 0.5) / (6 + 1 + 1) = 0.8125.
    result = scoring.arena_score(_games([("B>>A", "A>>B"), ("A=B", "B>A")]))
    assert result["score"] == pytest.approx(81.25)
    assert result["ci_low"] <= result["score"] <= result["ci_high"]


def test_the_closed_form_is_the_bradley_terry_fit() -> None:
    """One model against an anchored baseline: the logistic fit's win rate is the share."""
    rng = np.random.default_rng(3)
    battles = [
        battle(f"q{i}", scoring.VERDICTS[int(rng.integers(0, 5))], bool(i % 2)) for i in range(60)
    ]
    y = np.array([b.y for b in battles])
    w = np.array([b.weight for b in battles], dtype=float)
    beta = scoring.fit_logistic(np.ones((len(y), 1)), y, w)
    fitted = 1 / (1 + math.exp(-beta[0]))
    assert scoring.arena_score(battles)["score"] == pytest.approx(100 * fitted, abs=1e-6)


def test_bootstrap_is_seeded_and_has_100_rounds_by_default() -> None:
    battles = _games([("B>A", "A=B"), ("A>B", "B>A"), ("A=B", "A>>B"), ("B>>A", "A>B")])
    one = scoring.arena_score(battles, seed=1)
    assert one == scoring.arena_score(battles, seed=1)
    assert one != scoring.arena_score(battles, seed=2)
    assert scoring.BOOTSTRAP_ROUNDS == 100


def test_style_control_discounts_a_win_bought_with_length() -> None:
    """The model wins exactly where its answer is longer: controlled for length, it does
    not beat the baseline."""
    battles = []
    for i in range(40):
        longer = i % 2 == 0
        y = 1.0 if longer else 0.0
        d = 0.5 if longer else -0.5
        battles.append(Battle(f"q{i}", y, 1, style=(d, 0.0, 0.0, 0.0)))
    raw = scoring.arena_score(battles)["score"]
    styled = scoring.arena_score(battles, style_control=True)["score"]
    assert raw == 50.0
    assert styled == pytest.approx(50.0, abs=1.0)
    # Usually longer (30 of 40), winning 80% when longer and 40% when shorter: raw 70%;
    # at equal length the logistic model puts it between the two, well below 70%.
    usually_longer = [
        Battle(f"l{i}", 1.0 if i % 5 else 0.0, 1, style=(0.5, 0.0, 0.0, 0.0)) for i in range(30)
    ] + [
        Battle(f"s{i}", 1.0 if i % 5 in (0, 1) else 0.0, 1, style=(-0.5, 0.0, 0.0, 0.0))
        for i in range(10)
    ]
    assert scoring.arena_score(usually_longer)["score"] == 70.0
    controlled = scoring.arena_score(usually_longer, style_control=True)["score"]
    assert 55.0 < controlled < 66.0


def test_style_features_count_markdown() -> None:
    text = "# Title\n\nSome **bold** words.\n\n- one\n- two\n1. three\n"
    assert scoring.style_features(text) == (11.0, 1.0, 3.0, 1.0)
    assert scoring.style_difference("a b c", "a") == (0.5, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- mt-bench / alpaca


def test_mt_bench_means_per_turn() -> None:
    result = scoring.mt_bench_score([(1, 8.0), (1, 6.0), (2, 4.0), (2, 2.0)])
    assert result["score"] == 5.0
    assert result["turn_1"] == 7.0 and result["turn_2"] == 3.0
    assert 2.0 <= result["ci_low"] <= 5.0 <= result["ci_high"] <= 8.0
    assert math.isnan(scoring.mt_bench_score([])["score"])


def test_alpaca_raw_and_length_controlled_win_rates() -> None:
    # Wins only where the model's output is longer, as often as it loses: LC ~ 50.
    prefs = [(1.0, 100.0), (0.0, -100.0)] * 20 + [(0.5, 0.0)] * 4
    result = scoring.alpaca_score(prefs)
    assert result["win_rate"] == 50.0
    assert result["score"] == pytest.approx(50.0, abs=1.0)
    # Wins everywhere but only with longer outputs: LC below the raw rate.
    prefs = [(1.0, 200.0)] * 15 + [(1.0, -10.0)] * 3 + [(0.0, -200.0)] * 2
    result = scoring.alpaca_score(prefs)
    assert result["win_rate"] == 90.0
    assert result["score"] < 90.0
    assert scoring.alpaca_score([(1.0, 5.0)] * 3)["score"] == 100.0


# --------------------------------------------------------------------------- files


def test_the_shipped_example_files_read() -> None:
    qs = formats.read_questions("arena-hard", DATA / "arena-hard-questions.jsonl")
    base = formats.read_answers("arena-hard", DATA / "arena-hard-baseline.jsonl")
    assert len(qs) == 6 and all(q.id in base for q in qs)
    mt = formats.read_questions("mt-bench", DATA / "mt-bench-questions.jsonl")
    assert {q.category for q in mt} == set(formats.MT_BENCH_TEMPERATURE)
    assert all(len(q.turns) == 2 for q in mt)
    refs = formats.read_answers("mt-bench", DATA / "mt-bench-reference.jsonl")
    assert set(refs) == {"103", "104", "105"}
    alp = formats.read_questions("alpaca-eval", DATA / "alpaca-eval.json")
    assert len(formats.alpaca_outputs(DATA / "alpaca-eval.json")) == len(alp) == 6


def test_arena_hard_v2_layout(tmp_path: Path) -> None:
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"uid": "x1", "prompt": "hi", "category": "c"}) + "\n")
    a = tmp_path / "a.jsonl"
    message = {"role": "assistant", "content": {"answer": "hello"}}
    a.write_text(json.dumps({"uid": "x1", "messages": [{"role": "user"}, message]}) + "\n")
    assert formats.read_questions("arena-hard", q)[0].turns == ("hi",)
    assert formats.read_answers("arena-hard", a) == {"x1": ("hello",)}


@pytest.mark.parametrize(
    ("suite", "text", "message"),
    [
        (
            "arena-hard",
            '{"question_id": "a", "turns": [{"content": "x"}]}\n{oops\n',
            ":2: not valid JSON",
        ),
        ("arena-hard", '{"turns": [{"content": "x"}]}\n', ":1: no question_id or uid field"),
        ("arena-hard", '{"question_id": "a"}\n', ":1: no prompt or turns field"),
        ("arena-hard", "[1, 2]\n", ":1: not a JSON object"),
        ("mt-bench", '{"question_id": 1, "turns": "x"}\n', ":1: turns must be a list"),
        ("mt-bench", '{"question_id": 1, "turns": ["x", 3]}\n', ":1: turns[1] must be text"),
        (
            "mt-bench",
            '{"question_id": 1, "turns": ["x"]}\n{"question_id": 1, "turns": ["y"]}\n',
            ":2: id '1' repeats",
        ),
        ("mt-bench", '{"question_id": true, "turns": ["x"]}\n', "question_id must be a string"),
        ("mt-bench", "\n\n", "holds no records"),
        ("alpaca-eval", '[{"instruction": "a"}, "b"]', "item 1: not a JSON object"),
        ("alpaca-eval", '{"instruction": ""}\n', ":1: instruction is empty"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, suite: str, text: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as info:
        formats.read_questions(suite, path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        formats.read_questions("mt-bench", tmp_path / "nope.jsonl")
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"question_id": 1, "turns": ["ok"]}\n\xff\xfe\n')
    with pytest.raises(InputError, match=r"b.jsonl:2: not UTF-8"):
        formats.read_questions("mt-bench", bad)
    with pytest.raises(InputError, match="is a folder"):
        formats.read_questions("mt-bench", tmp_path)


def test_answers_missing_for_a_question_are_named(tmp_path: Path) -> None:
    qs = formats.read_questions("arena-hard", DATA / "arena-hard-questions.jsonl")
    answers = formats.read_answers("arena-hard", DATA / "arena-hard-baseline.jsonl")
    del answers["ah-3"]
    with pytest.raises(InputError, match="no baseline answer for question 'ah-3'"):
        formats.match_answers(qs, answers, "base.jsonl", "baseline answer")
