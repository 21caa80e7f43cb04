"""One benchmark on one model: the model answers, the judge judges, the protocol scores.

The output folder holds ``answers.jsonl`` (the model's answers, kept so a rerun does not
generate again), ``judgments.jsonl`` (every judge reply, see ``judge``) and ``result.json``
(the score, its interval, the counts and per-question details for the report).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eva_runtime.bench import formats, prompts, scoring
from eva_runtime.bench.formats import Question
from eva_runtime.bench.judge import JsonlStore, Judge, Messages, Outcome, judge_all
from eva_runtime.errors import InputError
from eva_runtime.progress import note, task, warn
from eva_runtime.timing import timed

RESULT = "result.json"
Ask = Callable[[list[Messages], Callable[[str], Any]], list[Outcome]]
DETAIL_CHARS = 4000  # answers and replies kept per question in result.json, for the report


@dataclass(frozen=True)
class BenchConfig:
    suite: str
    questions: str
    answers: str | None = None
    limit: int | None = None
    temperature: float | None = None
    max_new_tokens: int = 1024
    style_control: bool = False
    parse_retries: int = 2
    seed: int = 0


def load_inputs(
    cfg: BenchConfig,
) -> tuple[list[Question], dict[str, tuple[str, ...]]]:
    """The questions (first ``limit``) and the answers they are compared with or graded by."""
    questions = formats.read_questions(cfg.suite, cfg.questions)
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    answers: dict[str, tuple[str, ...]] = {}
    if cfg.suite == "arena-hard":
        if not cfg.answers:
            raise InputError("arena-hard needs --answers: the baseline model's answers (JSONL)")
        answers = formats.read_answers(cfg.suite, cfg.answers)
        formats.match_answers(questions, answers, cfg.answers, "baseline answer")
    elif cfg.suite == "alpaca-eval":
        source = cfg.answers or cfg.questions
        answers = (
            formats.read_answers(cfg.suite, cfg.answers)
            if cfg.answers
            else formats.alpaca_outputs(cfg.questions)
        )
        if not answers:
            raise InputError(
                f"{cfg.questions}: alpaca-eval needs reference outputs: an output field in "
                "every record, or --answers FILE"
            )
        formats.match_answers(questions, answers, source, "reference output")
    elif cfg.answers:
        answers = formats.read_answers(cfg.suite, cfg.answers)
    return questions, answers


def _temperature(cfg: BenchConfig, q: Question) -> float:
    if cfg.temperature is not None:
        return cfg.temperature
    if cfg.suite == "mt-bench":
        return formats.MT_BENCH_TEMPERATURE.get(q.category, 0.7)
    return 0.0


def answer_key(model_id: str, q: Question, turn: int, cfg: BenchConfig) -> str:
    raw = json.dumps(
        [model_id, q.id, q.turns[: turn + 1], turn, _temperature(cfg, q), cfg.max_new_tokens],
        ensure_ascii=False,
    ).encode()
    return hashlib.sha256(raw).hexdigest()[:20]


def model_answers(
    make_generator: Callable[[], Any],
    model_id: str,
    questions: list[Question],
    cfg: BenchConfig,
    store: JsonlStore,
    label: str,
) -> tuple[dict[str, tuple[str, ...]], int, int]:
    """Each question's answers (one per turn; MT-Bench's turn 2 sees turn 1), generated only
    where the store has none; also how many were generated now, and their tokens."""
    from eva_runtime.backends import SamplingParams

    have = {r["key"]: r for r in store.records}
    turns = max(len(q.turns) for q in questions) if cfg.suite == "mt-bench" else 1
    out: dict[str, list[str]] = {q.id: [] for q in questions}
    generator = None
    tokens = generated = 0
    try:
        for turn in range(turns):
            todo = [q for q in questions if len(q.turns) > turn]
            missing = [q for q in todo if answer_key(model_id, q, turn, cfg) not in have]
            by_temp: dict[float, list[Question]] = {}
            for q in missing:
                by_temp.setdefault(_temperature(cfg, q), []).append(q)
            with task(f"{label}: answering (turn {turn + 1})", len(missing)) as advance:
                for temp, group in by_temp.items():
                    if generator is None:
                        generator = make_generator()
                    convs = []
                    for q in group:
                        conv: list[dict[str, str]] = []
                        for k in range(turn):
                            conv += [
                                {"role": "user", "content": q.turns[k]},
                                {"role": "assistant", "content": out[q.id][k]},
                            ]
                        conv.append({"role": "user", "content": q.turns[turn]})
                        convs.append(conv)
                    params = SamplingParams(
                        n=1,
                        temperature=temp,
                        top_p=1.0,
                        max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed,
                    )
                    with timed("generate"):
                        results = generator.generate(convs, params, on_progress=advance)
                    for q, res in zip(group, results, strict=True):
                        c = res[0]
                        tokens += c.num_tokens
                        generated += 1
                        record = {
                            "key": answer_key(model_id, q, turn, cfg),
                            "model": model_id,
                            "question_id": q.id,
                            "turn": turn + 1,
                            "answer": c.text,
                            "num_tokens": c.num_tokens,
                            "finish_reason": c.finish_reason,
                        }
                        store.put(record)
                        have[record["key"]] = record
            for q in todo:
                out[q.id].append(have[answer_key(model_id, q, turn, cfg)]["answer"])
    finally:
        if generator is not None:
            generator.close()
    return {k: tuple(v) for k, v in out.items()}, generated, tokens


def _cut(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + " [...]"


def _arena(
    cfg: BenchConfig,
    questions: list[Question],
    answers: dict[str, tuple[str, ...]],
    refs: dict[str, tuple[str, ...]],
    ask: Ask,
) -> tuple[dict[str, float], list[dict[str, Any]], list[Outcome]]:
    """Two games per question, the baseline first in game 1; battles scored by the fit."""
    details: list[dict[str, Any]] = []
    asks: list[Messages] = []
    meta: list[tuple[Question, bool]] = []
    for q in questions:
        base, mine = refs[q.id][0], answers[q.id][0]
        # Game 1: the baseline is A; game 2: the model is A.
        asks += [
            prompts.arena_prompt(q.turns[0], base, mine),
            prompts.arena_prompt(q.turns[0], mine, base),
        ]
        meta += [(q, False), (q, True)]
    outcomes = ask(asks, scoring.parse_verdict)
    battles = []
    for (q, model_is_a), o in zip(meta, outcomes, strict=True):
        if o.parsed is None:
            continue
        style = scoring.style_difference(answers[q.id][0], refs[q.id][0])
        battles.append(scoring.battle(q.id, o.parsed, model_is_a, style))
    stats = scoring.arena_score(battles, style_control=cfg.style_control, seed=cfg.seed)
    by_q: dict[str, list[tuple[Any, Any]]] = {}
    for (q, model_is_a), o in zip(meta, outcomes, strict=True):
        by_q.setdefault(q.id, []).append((model_is_a, o))
    for q in questions:
        games = by_q[q.id]
        # Per game: +-0.5 for a win or loss, +-1.5 for a strong one, 0 for a tie.
        ys = [
            (b.y - 0.5) * b.weight
            for b in (scoring.battle(q.id, o.parsed, a) for a, o in games if o.parsed)
        ]
        details.append(
            {
                "question_id": q.id,
                "question": _cut(q.turns[0]),
                "answer": _cut(answers[q.id][0]),
                "other": _cut(refs[q.id][0]),
                "verdicts": [o.parsed for _, o in games],
                "value": sum(ys) / len(ys) if ys else None,
                "reasoning": _cut(games[0][1].replies[-1] if games[0][1].replies else ""),
            }
        )
    return stats, details, outcomes


def _mt_bench(
    cfg: BenchConfig,
    questions: list[Question],
    answers: dict[str, tuple[str, ...]],
    refs: dict[str, tuple[str, ...]],
    ask: Ask,
) -> tuple[dict[str, float], list[dict[str, Any]], list[Outcome]]:
    """One grading per answered turn, against the reference where the category needs one."""
    details: list[dict[str, Any]] = []
    asks: list[Messages] = []
    meta: list[tuple[Question, int]] = []
    for q in questions:
        ref_turns = refs.get(q.id) or q.reference
        for turn in range(len(answers[q.id])):
            reference = None
            if q.category in formats.MT_BENCH_NEEDS_REFERENCE and len(ref_turns) > turn:
                reference = ref_turns[turn]
            asks.append(prompts.mt_prompt(q.turns, answers[q.id], turn + 1, reference))
            meta.append((q, turn + 1))
    outcomes = ask(asks, scoring.parse_mt_rating)
    ratings = [
        (t, float(o.parsed))
        for (q, t), o in zip(meta, outcomes, strict=True)
        if o.parsed is not None
    ]
    stats = scoring.mt_bench_score(ratings, seed=cfg.seed)
    for (q, t), o in zip(meta, outcomes, strict=True):
        details.append(
            {
                "question_id": q.id,
                "turn": t,
                "category": q.category,
                "question": _cut(q.turns[t - 1]),
                "answer": _cut(answers[q.id][t - 1]),
                "value": o.parsed,
                "reasoning": _cut(o.replies[-1] if o.replies else ""),
            }
        )
    return stats, details, outcomes


def _alpaca_eval(
    cfg: BenchConfig,
    questions: list[Question],
    answers: dict[str, tuple[str, ...]],
    refs: dict[str, tuple[str, ...]],
    ask: Ask,
) -> tuple[dict[str, float], list[dict[str, Any]], list[Outcome]]:
    """One preference per instruction, the order drawn per instruction from the seed."""
    details: list[dict[str, Any]] = []
    rng = random.Random(cfg.seed)
    asks: list[Messages] = []
    meta: list[tuple[Question, bool]] = []
    for q in questions:
        mine, ref = answers[q.id][0], refs[q.id][0]
        model_first = rng.random() < 0.5
        a, b = (mine, ref) if model_first else (ref, mine)
        asks.append(prompts.alpaca_prompt(q.turns[0], a, b))
        meta.append((q, model_first))
    outcomes = ask(asks, scoring.parse_choice)
    prefs: list[tuple[float, float]] = []
    for (q, model_first), o in zip(meta, outcomes, strict=True):
        value = None
        if o.parsed is not None:
            value = 0.5 if o.parsed == "tie" else float((o.parsed == "a") == model_first)
            prefs.append((value, len(answers[q.id][0]) - len(refs[q.id][0])))
        details.append(
            {
                "question_id": q.id[:80],
                "question": _cut(q.turns[0]),
                "answer": _cut(answers[q.id][0]),
                "other": _cut(refs[q.id][0]),
                "value": value,
                "reasoning": _cut(o.replies[-1] if o.replies else ""),
            }
        )
    stats = scoring.alpaca_score(prefs, seed=cfg.seed)
    return stats, details, outcomes


def run_bench(
    cfg: BenchConfig,
    *,
    model_id: str,
    make_generator: Callable[[], Any],
    judge: Judge,
    out: Path,
    label: str | None = None,
) -> dict[str, Any]:
    """Answer, judge and score; write ``result.json`` in ``out`` and return it."""
    label = label or f"{cfg.suite} {model_id}"
    questions, refs = load_inputs(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Both stores are read first: a damaged one fails before any model is loaded.
    answer_store = JsonlStore(out / "answers.jsonl")
    store = JsonlStore(out / "judgments.jsonl")
    answers, answered, tokens = model_answers(
        make_generator, model_id, questions, cfg, answer_store, label
    )

    def ask(asks: list[Messages], parse: Callable[[str], Any]) -> list[Outcome]:
        with timed("score"):  # the judge's work
            return judge_all(
                judge,
                store,
                asks,
                parse,
                parse_retries=cfg.parse_retries,
                seed=cfg.seed,
                label=f"{label}: judging",
            )

    protocol = {"arena-hard": _arena, "mt-bench": _mt_bench, "alpaca-eval": _alpaca_eval}
    stats, details, outcomes = protocol[cfg.suite](cfg, questions, answers, refs, ask)
    judged = sum(1 for o in outcomes if o.parsed is not None)
    result = {
        "suite": cfg.suite,
        "model": model_id,
        "judge": judge.id,
        **stats,
        "questions": len(questions),
        "judged": judged,
        "excluded": sum(1 for o in outcomes if o.status == "unparsed"),
        "errors": sum(1 for o in outcomes if o.status in ("error", "missing")),
        "answered": answered,
        "answer_tokens": tokens,
        "config": asdict(cfg),
        "details": details,
    }
    from eva_runtime.artifacts import atomic_write_json

    atomic_write_json(out / RESULT, _finite(result))
    from rich.markup import escape

    if judged:
        score = f"score {result['score']:.2f} [{result['ci_low']:.2f}, {result['ci_high']:.2f}]"
    else:
        score = "no score (nothing could be judged)"
    note(
        escape(
            f"{label}: {score}, {judged} judgments used, {result['excluded']} unparseable, "
            f"{result['errors']} failed requests"
        )
    )
    failed = [o.error for o in outcomes if o.status == "error" and o.error]
    if failed:
        warn(
            escape(
                f"{label}: {len(failed)} judge requests failed after retries (first: "
                f"{failed[0]}); they are excluded here and asked again by the next run"
            )
        )
    return result


def _finite(obj: Any) -> Any:
    """NaN (no judgment parsed) as null, so result.json stays strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def brief(result: dict[str, Any]) -> dict[str, Any]:
    """The fields scripts read (the CLI's last line), without the per-question details."""
    return {k: v for k, v in _finite(result).items() if k not in ("details", "config")}
