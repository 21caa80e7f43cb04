"""Evolving prompts, Evol-Instruct style: the pure parts.

The evolver (by default the policy itself) receives one instruction per variant asking it
to rewrite a parent prompt. In-depth rewrites make the same task harder (add a
constraint, deepen it, make it concrete, require explicit reasoning); in-breadth writes a
new prompt from the same domain. Its replies are untrusted text: ``parse_evolved`` strips
the wrappers models like to add and ``clean_evolved`` drops what is not a usable new
prompt, with the reason, so nothing disappears unaccounted for.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Matcher(Protocol):
    """What ``clean_evolved`` asks of a contamination index (``creator.contamination``, which
    builds on this module's ``normalise`` and ``shingles``): a match, or None."""

    def match(self, text: str) -> object | None: ...


# (method, instruction). Each asks for the rewritten prompt alone, so parsing stays simple.
OPERATIONS: tuple[tuple[str, str], ...] = (
    (
        "constraints",
        "Rewrite the prompt below so that answering it well is harder: add exactly one "
        "further requirement or restriction the answer has to respect.",
    ),
    (
        "deepening",
        "Rewrite the prompt below so that it asks for a deeper, more thorough treatment of "
        "its subject, going beyond a surface-level answer.",
    ),
    (
        "concretizing",
        "Rewrite the prompt below by replacing its general ideas with specific, concrete "
        "details, names or numbers, so the task becomes more precise.",
    ),
    (
        "reasoning",
        "Rewrite the prompt below so that answering it requires several explicit steps of "
        "reasoning instead of a single obvious step.",
    ),
    (
        "breadth",
        "Write a brand-new prompt from the same field as the prompt below: a different, "
        "equally rare task of similar length and difficulty, not a rewording.",
    ),
)
METHOD_NAMES = tuple(m for m, _ in OPERATIONS)

_FRAME = (
    "You are improving a set of instructions for an AI assistant.\n"
    "{instruction}\n"
    "The result must stand on its own and be answerable by a person. "
    "Reply with the new prompt only: no preface, no explanation, no answer to it.\n\n"
    "#Prompt#:\n{parent}\n\n#New Prompt#:\n"
)


def evolve_request(parent: str, method: str) -> str:
    """The message sent to the evolver for one variant of ``parent``."""
    instruction = dict(OPERATIONS)[method]
    return _FRAME.format(instruction=instruction, parent=parent.strip())


def plan_methods(num_parents: int, variants: int, seed: int) -> list[list[str]]:
    """Which operation each variant of each parent uses.

    Variants of one parent use distinct operations where there are enough of them, in an
    order shuffled per parent, so a run mixes in-depth and in-breadth evolutions.
    """
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for _ in range(num_parents):
        order = list(rng.permutation(len(METHOD_NAMES)))
        out.append([METHOD_NAMES[order[j % len(order)]] for j in range(variants)])
    return out


_PREFIXES = re.compile(
    r"^\s*(?:\*\*|#+\s*)?(?:#?\s*(?:new|rewritten|evolved|created|improved|revised)\s+"
    r"(?:prompt|instruction|question|task)\s*#?|#?\s*(?:prompt|instruction)\s*#?)\s*(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_CHATTER = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|here(?:'s| is| are))\b[^\n:]*[:.!]\s*\n?",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.DOTALL)
_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("«", "»"))


def parse_evolved(text: str) -> str:
    """The prompt inside an evolver reply: wrappers, labels, fences and quotes removed."""
    s = text.replace("\r\n", "\n").strip()
    for _ in range(3):  # wrappers can nest: 'Sure! **New Prompt:** "..."'
        before = s
        s = _CHATTER.sub("", s, count=1).strip()
        s = _PREFIXES.sub("", s, count=1).strip()
        m = _FENCE.match(s)
        if m:
            s = m.group(1).strip()
        for a, b in _QUOTES:
            if len(s) >= 2 and s.startswith(a) and s.endswith(b):
                s = s[1:-1].strip()
        if s == before:
            break
    # A model that goes on to answer its own prompt marks it; keep the prompt only.
    s = re.split(r"\n\s*(?:#+\s*)?(?:answer|response|solution)\s*#?\s*:", s, flags=re.I)[0]
    # Small models go on with another '#Section#:' of the template; keep what precedes it.
    s = re.split(r"\n\s*#[^#\n]{1,40}#\s*:?", s)[0]
    return s.strip()


def normalise(text: str) -> str:
    """Case-, space- and punctuation-insensitive form used for duplicate checks."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = re.sub(r"[^\w\s]", " ", t)
    return " ".join(t.split())


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = normalise(text).split()
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def prompt_id(text: str, prefix: str = "p") -> str:
    """A stable id from the prompt's text (used when the source has no id column)."""
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


@dataclass(frozen=True)
class Candidate:
    parent_id: str
    parent: str
    method: str
    reply: str


@dataclass
class Cleaned:
    kept: list[tuple[Candidate, str]] = field(default_factory=list)
    dropped: list[tuple[Candidate, str, str]] = field(default_factory=list)  # (cand, text, reason)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, reason in self.dropped:
            out[reason] = out.get(reason, 0) + 1
        return out


def clean_evolved(
    candidates: Sequence[Candidate],
    *,
    existing: Sequence[str] = (),
    near_duplicate_threshold: float = 0.9,
    min_chars: int = 8,
    contamination: Matcher | None = None,
) -> Cleaned:
    """Keep usable evolved prompts; drop the rest with a reason.

    Reasons: ``empty`` (nothing left after parsing), ``too_short``, ``contaminated``
    (``contamination`` matches it: an exact or near duplicate of a held-out prompt or a
    benchmark question), ``copy_of_parent`` (same normalised text, or near duplicate of the
    parent), ``duplicate`` (same normalised text as a kept prompt or one already in the
    prompt set), and ``near_duplicate`` (word 3-gram Jaccard similarity to a kept sibling at
    or above the threshold). Near duplicates are checked among variants of the same parent,
    where they arise; exact duplicates across the whole set. Contamination comes before the
    duplicate checks so that every leak of evaluation text is counted as such, even one that
    is also a copy of its parent (a prompt source that holds benchmark questions).
    """
    out = Cleaned()
    seen = {normalise(t) for t in existing}
    kept_by_parent: dict[str, list[frozenset[str]]] = {}
    for cand in candidates:
        text = parse_evolved(cand.reply)
        norm = normalise(text)
        if not norm:
            out.dropped.append((cand, text, "empty"))
            continue
        if len(text) < min_chars:
            out.dropped.append((cand, text, "too_short"))
            continue
        if contamination is not None and contamination.match(text) is not None:
            out.dropped.append((cand, text, "contaminated"))
            continue
        sh = shingles(text)
        if norm == normalise(cand.parent) or (
            jaccard(sh, shingles(cand.parent)) >= near_duplicate_threshold
        ):
            out.dropped.append((cand, text, "copy_of_parent"))
            continue
        if norm in seen:
            out.dropped.append((cand, text, "duplicate"))
            continue
        siblings = kept_by_parent.setdefault(cand.parent_id, [])
        if any(jaccard(sh, other) >= near_duplicate_threshold for other in siblings):
            out.dropped.append((cand, text, "near_duplicate"))
            continue
        seen.add(norm)
        siblings.append(sh)
        out.kept.append((cand, text))
    return out
