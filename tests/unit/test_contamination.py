"""The contamination guard: evolved prompts that copy held-out or benchmark text are dropped."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from eva_runtime.artifacts import RunDir
from eva_runtime.backends.protocol import Completion, SamplingParams
from eva_runtime.creator.contamination import contamination_index
from eva_runtime.creator.evolve import Candidate, clean_evolved, jaccard, normalise, shingles
from eva_runtime.errors import InputError
from eva_runtime.phases.context import Context
from eva_runtime.spec import load_run
from tiny_run import tiny_manifest

# 27 words: 25 word 3-grams; one word changed in the middle leaves 22 of them shared.
TRAVEL = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting "
    "cultural experiences, local food, hidden beaches and the must-see attractions "
    "for first visitors."
)
REFERENCES = [
    TRAVEL,
    "Rewrite your previous response. Start every sentence with the letter A.",
    "Hi there",
]


def test_exact_duplicate_modulo_case_space_and_punctuation_is_similarity_one() -> None:
    index = contamination_index(REFERENCES, 0.7)
    messy = "  COMPOSE an engaging travel-blog post about a recent trip to hawaii highlighting\n"
    messy += "cultural experiences local food; hidden beaches and the must see attractions "
    messy += "for first visitors!!!"
    assert normalise(messy) == normalise(TRAVEL)  # what the guard is meant to see through
    assert index.match(messy) == (1.0, 0)
    assert index.match("rewrite YOUR previous response start every sentence with the letter a") == (
        1.0,
        1,
    )


def test_near_duplicate_with_one_word_changed_is_caught_at_the_default_threshold() -> None:
    index = contamination_index(REFERENCES, 0.7)
    near = TRAVEL.replace("Hawaii", "Japan")
    hit = index.match(near)
    assert hit is not None
    sim, ref = hit
    assert ref == 0
    assert sim == pytest.approx(22 / 28)  # 22 shared of 25 + 3 new shingles
    assert sim == pytest.approx(jaccard(shingles(near), shingles(TRAVEL)))


def test_an_unrelated_prompt_passes() -> None:
    index = contamination_index(REFERENCES, 0.7)
    assert index.match("Explain how the gears of a bicycle work to a ten year old.") is None
    # Sharing a few words (and so a shingle) is not enough.
    assert index.match("Compose an engaging limerick about a cat who hates Mondays.") is None


def test_the_threshold_is_respected() -> None:
    near = TRAVEL.replace("Hawaii", "Japan")  # similarity 22/28 = 0.79
    assert contamination_index(REFERENCES, 0.75).match(near) is not None
    assert contamination_index(REFERENCES, 0.8).match(near) is None
    # At 1.0 only exact duplicates count.
    assert contamination_index(REFERENCES, 1.0).match(near) is None
    assert contamination_index(REFERENCES, 1.0).match(TRAVEL.upper()) == (1.0, 0)
    two_changed = near.replace("beaches", "temples")  # 19 shared of 25 + 6 new
    hit = contamination_index(REFERENCES, 0.5).match(two_changed)
    assert hit is not None and hit[0] == pytest.approx(19 / 31)
    assert contamination_index(REFERENCES, 0.7).match(two_changed) is None


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01])
def test_a_threshold_outside_zero_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        contamination_index(REFERENCES, bad)


def test_short_texts_without_a_three_gram_are_caught_by_exact_match_only() -> None:
    index = contamination_index([*REFERENCES, "Hello"], 0.7)
    assert index.match("hi, THERE!") == (1.0, 2)
    assert index.match("hello.") == (1.0, 3)
    assert index.match("hi there friend") is None
    assert index.match("Hi") is None
    assert index.match("  ?! ") is None  # nothing left after normalise matches nothing


def test_indices_point_into_the_references_even_past_empty_ones() -> None:
    index = contamination_index(["", "!!!", "Name the planets of the solar system in order."], 0.7)
    assert index.match("name the planets of the solar system in order") == (1.0, 2)
    assert index.size == 3


def test_the_closest_reference_wins_and_ties_go_to_the_first() -> None:
    base = "Plan a three day itinerary for Rome with museums, food markets and a day trip."
    refs = [
        base.replace("Rome", "Paris").replace("museums", "galleries"),  # two words off
        base.replace("Rome", "Paris"),  # one word off
        base.replace("Rome", "Paris"),  # the same again: a tie, loses to index 1
    ]
    hit = contamination_index(refs, 0.5).match(base)
    assert hit is not None and hit[1] == 1


def test_the_inverted_index_agrees_with_comparing_every_reference() -> None:
    rng = random.Random(3)
    vocab = ["the", "a", "cat", "dog", "sea", "sky", "run", "jump", "red", "blue", "write"]
    refs = [" ".join(rng.choices(vocab, k=rng.randint(1, 9))) for _ in range(400)]
    queries = [" ".join(rng.choices(vocab, k=rng.randint(1, 9))) for _ in range(300)]
    queries += [r.replace(r.split()[0], "sky", 1) for r in refs[:100]]
    threshold = 0.4
    index = contamination_index(refs, threshold)
    ref_sh = [shingles(r) for r in refs]
    ref_norm = [normalise(r) for r in refs]
    hits = 0
    for q in queries:
        expected: tuple[float, int] | None = None
        if normalise(q) in ref_norm:
            expected = (1.0, ref_norm.index(normalise(q)))
        else:
            sims = [jaccard(shingles(q), s) for s in ref_sh]
            best = max(sims)
            if best >= threshold:
                expected = (best, sims.index(best))
        got = index.match(q)
        if expected is None:
            assert got is None, q
        else:
            hits += 1
            assert got is not None, q
            assert got[0] == pytest.approx(expected[0]) and got[1] == expected[1], q
    assert 0 < hits < len(queries)  # the comparison exercised both outcomes


def _cand(reply: str, parent: str = "Name three fruits.", pid: str = "p1") -> Candidate:
    return Candidate(parent_id=pid, parent=parent, method="constraints", reply=reply)


def test_clean_evolved_drops_contaminated_candidates_and_keeps_the_rest() -> None:
    heldout = ["What is the tallest mountain in Africa and how high is it?"]
    index = contamination_index([*heldout, *REFERENCES], 0.7)
    candidates = [
        _cand("Name three tropical fruits and say where each grows."),
        _cand('New prompt: "what is the TALLEST mountain in Africa, and how high is it"'),
        _cand(TRAVEL.replace("Hawaii", "Japan"), pid="p2"),
        _cand("Hi there", parent="Hi there", pid="p3"),  # also its parent: still contaminated
        _cand("Hi?"),  # too short comes first
        _cand("Describe how bananas ripen after picking, in two steps."),
    ]
    out = clean_evolved(candidates, contamination=index, near_duplicate_threshold=0.7)
    assert [t for _, t in out.kept] == [
        "Name three tropical fruits and say where each grows.",
        "Describe how bananas ripen after picking, in two steps.",
    ]
    assert out.counts() == {"contaminated": 3, "too_short": 1}
    assert [c.parent_id for c, _, r in out.dropped if r == "contaminated"] == ["p1", "p2", "p3"]
    assert len(out.kept) + len(out.dropped) == len(candidates)
    # Without an index nothing is contaminated: the guard is what drops them.
    plain = clean_evolved(candidates, near_duplicate_threshold=0.7)
    assert "contaminated" not in plain.counts() and len(plain.kept) == 4


# ---------------------------------------------------------------------- the create step


MT_TURN_2 = (
    "Now rewrite your travel post so that every sentence begins with the letter A and the "
    "whole post stays under two hundred words."
)


class _ScriptedEvolver:
    """Evolver replies chosen by the test: copies of held-out prompts and benchmark turns."""

    def __init__(self, heldout: Sequence[str]) -> None:
        self.heldout = list(heldout)
        self.requests: list[str] = []

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        system: str | None = None,
        on_progress: object = None,
    ) -> list[list[Completion]]:
        self.requests.extend(prompts)
        out = []
        for i in range(len(prompts)):
            if i % 3 == 0:  # a held-out prompt, shouted
                text = self.heldout[i % len(self.heldout)].upper()
            elif i % 3 == 1:  # the benchmark's second turn with one word changed
                text = MT_TURN_2.replace("two hundred", "three hundred")
            else:
                text = f"Draft a packing list number {i} for a week of winter camping alone."
            out.append([Completion(text=text, finish_reason="stop", num_tokens=5)])
        return out

    def close(self) -> None:
        pass


def _mt_bench(path: Path) -> Path:
    record = {
        "question_id": 81,
        "category": "writing",
        "turns": [TRAVEL, MT_TURN_2],
    }
    path.write_text(json.dumps(record) + "\n")
    return path


def _context(tmp_path: Path, model: Path, questions: Path) -> Context:
    bench = {"suite": "mt-bench", "questions": str(questions), "judge": {"model": str(model)}}
    manifest = tiny_manifest(tmp_path, model, spec={"evaluation": {"benchmarks": [bench]}})
    return Context(run=load_run(manifest), run_dir=RunDir(tmp_path / "run"))


@pytest.mark.slow
def test_the_create_step_drops_and_counts_contaminated_prompts(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eva_runtime.phases.create import run_create
    from eva_runtime.phases.generate import run_generate
    from eva_runtime.phases.prepare import run_prepare

    ctx = _context(tmp_path, tiny_model, _mt_bench(tmp_path / "mt.jsonl"))
    run_prepare(ctx)
    run_generate(ctx, 0, "generate", 0, 1)
    evolver = _ScriptedEvolver(ctx.heldout()["prompt"].tolist())
    monkeypatch.setattr(Context, "evolver_generator", lambda self, path, it: evolver)
    counts = run_create(ctx, 0)["counts"]

    requests = len(evolver.requests)
    assert requests == counts["evolve_requests"] == 18
    contaminated = sum(1 for i in range(requests) if i % 3 != 2)
    assert counts["dropped_contaminated"] == contaminated == 12
    assert counts["evolved"] == requests - contaminated
    dropped = pd.read_parquet(ctx.run_dir.step(0, "create").path / "dropped.parquet")
    assert (dropped["reason"] == "contaminated").sum() == contaminated
    evolved = pd.read_parquet(ctx.run_dir.step(0, "create").path / "evolved.parquet")
    kept = {normalise(p) for p in evolved["prompt"]}
    assert not kept & {normalise(p) for p in evolver.heldout}
    assert all(p.startswith("Draft a packing list") for p in evolved["prompt"])


def test_reference_texts_are_held_out_prompts_and_every_benchmark_turn(tmp_path: Path) -> None:
    from eva_runtime.phases.create import reference_index
    from eva_runtime.phases.prepare import run_prepare

    model = tmp_path / "no-model"  # prepare and the index never load it
    ctx = _context(tmp_path, model, _mt_bench(tmp_path / "mt.jsonl"))
    run_prepare(ctx)
    index = reference_index(ctx)
    heldout = ctx.heldout()["prompt"].tolist()
    assert index.size == len(heldout) + 2 and len(heldout) == 3
    for i, prompt in enumerate(heldout):
        assert index.match(prompt.lower()) == (1.0, i)
    assert index.match(MT_TURN_2) == (1.0, len(heldout) + 1)
    assert index.threshold == ctx.spec.creator.evolve.contamination_threshold


def test_an_unreadable_benchmark_file_fails_with_its_file_and_line(tmp_path: Path) -> None:
    from eva_runtime.phases.create import reference_index
    from eva_runtime.phases.prepare import run_prepare

    bad = tmp_path / "mt.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "turns": ["Fine."]}) + "\n{not json\n")
    ctx = _context(tmp_path, tmp_path / "no-model", bad)
    run_prepare(ctx)
    with pytest.raises(InputError, match=rf"{bad}:2: not valid JSON"):
        reference_index(ctx)
