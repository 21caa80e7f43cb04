from __future__ import annotations

import pytest

from eva_runtime.creator.evolve import (
    METHOD_NAMES,
    Candidate,
    clean_evolved,
    evolve_request,
    parse_evolved,
    plan_methods,
)


@pytest.mark.parametrize(
    ("reply", "prompt"),
    [
        (
            'Sure! Here is the rewritten prompt:\n"Write a poem about cats in 3 stanzas."',
            "Write a poem about cats in 3 stanzas.",
        ),
        ("**New Prompt:** Explain X in detail", "Explain X in detail"),
        ("#New Prompt#:\nDo Y step by step.\n\nAnswer: it is 4", "Do Y step by step."),
        ("Add a flourish.\n\n#New Prompt#:\nSend the flowers.", "Add a flourish."),
        ("```\nList five rivers.\n```", "List five rivers."),
        ("Rewritten prompt - Compare A and B", "Compare A and B"),
        ("“Quoted task here”", "Quoted task here"),
        ("Write about prompts: all of them", "Write about prompts: all of them"),
    ],
)
def test_parse_strips_wrappers_the_evolver_adds(reply: str, prompt: str) -> None:
    assert parse_evolved(reply) == prompt


def test_every_request_carries_the_parent_and_asks_for_the_prompt_only() -> None:
    for m in METHOD_NAMES:
        msg = evolve_request("  Name three fruits.  ", m)
        assert "Name three fruits." in msg and "prompt only" in msg


def test_variants_of_one_parent_use_distinct_operations() -> None:
    plan = plan_methods(num_parents=30, variants=4, seed=1)
    assert all(len(set(p)) == 4 for p in plan)
    assert {m for p in plan for m in p} == set(METHOD_NAMES)


def _cand(reply: str, parent: str = "Name three fruits.", pid: str = "p1") -> Candidate:
    return Candidate(parent_id=pid, parent=parent, method="constraints", reply=reply)


def test_cleaning_drops_each_kind_of_bad_variant_with_its_reason() -> None:
    out = clean_evolved(
        [
            _cand("Name three tropical fruits and say where each grows."),
            _cand("   "),
            _cand("Hi?"),
            _cand("name three fruits!"),  # the parent again
            _cand("Name three tropical fruits and say where each grows."),  # exact dup
            _cand("Name three tropical fruits and say where each grows, please."),  # near dup
            _cand("List the capital of France."),  # exists already in the set
            _cand("Describe how bananas ripen after picking, in two steps."),
        ],
        existing=["List the capital of France"],
        near_duplicate_threshold=0.7,
    )
    assert [t for _, t in out.kept] == [
        "Name three tropical fruits and say where each grows.",
        "Describe how bananas ripen after picking, in two steps.",
    ]
    assert out.counts() == {
        "empty": 1,
        "too_short": 1,
        "copy_of_parent": 1,
        "duplicate": 2,
        "near_duplicate": 1,
    }
    assert len(out.kept) + len(out.dropped) == 8  # nothing lost unaccounted for


def test_near_duplicates_of_different_parents_are_both_kept() -> None:
    out = clean_evolved(
        [
            _cand("Explain tides and the moon in a short paragraph for kids.", pid="a"),
            _cand("Explain tides and the moon in a short paragraph for kids now.", pid="b"),
        ]
    )
    assert len(out.kept) == 2
