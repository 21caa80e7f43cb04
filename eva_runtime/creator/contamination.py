"""The contamination guard: evolved prompts must not be copies of what the run is measured on.

Evolution rewrites training prompts, and a rewrite can land on (or near) a held-out prompt or
a benchmark question; training on it would leak the test set into the policy and inflate the
very numbers that judge the run. ``contamination_index`` is built once per create step from
those reference texts and ``ContaminationIndex.match`` tells, for one evolved prompt, whether
it is an exact duplicate after ``normalise`` (similarity 1.0) or a near duplicate (word
3-gram Jaccard similarity at or above the threshold), and of which reference.

References number in the thousands (a benchmark suite plus the held-out set) and candidates
in the hundreds per iteration, so comparing every pair would be slow: an inverted index from
shingle to the references holding it yields the only candidates that can score above zero,
and counting shared shingles through it gives the intersection sizes Jaccard needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eva_runtime.creator.evolve import normalise, shingles


@dataclass(frozen=True)
class ContaminationIndex:
    """Reference texts, indexed for exact and near-duplicate look-ups (see ``match``)."""

    threshold: float
    size: int  # reference texts given, empty ones included, so indices refer to the input
    exact: dict[str, int]  # normalised text -> index of its first reference
    sizes: tuple[int, ...]  # number of shingles of each reference
    postings: dict[str, tuple[int, ...]]  # shingle -> references holding it, ascending

    def match(self, text: str) -> tuple[float, int] | None:
        """(similarity, reference index) of the closest reference at or above the threshold.

        An exact match after ``normalise`` is 1.0 whatever its length, so texts too short to
        have a word 3-gram are still caught. Otherwise the most similar reference sharing a
        shingle wins (the first one on ties); None when none reaches the threshold.
        """
        norm = normalise(text)
        if not norm:
            return None
        hit = self.exact.get(norm)
        if hit is not None:
            return 1.0, hit
        sh = shingles(text)
        shared: dict[int, int] = {}
        for s in sh:
            for ref in self.postings.get(s, ()):
                shared[ref] = shared.get(ref, 0) + 1
        best: tuple[float, int] | None = None
        for ref, inter in shared.items():
            sim = inter / (len(sh) + self.sizes[ref] - inter)
            if sim >= self.threshold and (
                best is None or sim > best[0] or (sim == best[0] and ref < best[1])
            ):
                best = (sim, ref)
        return best


def contamination_index(references: Iterable[str], threshold: float) -> ContaminationIndex:
    """Index ``references`` (held-out prompts, benchmark turns) for ``ContaminationIndex.match``.

    Texts empty after ``normalise`` match nothing; they keep their position so that the
    indices ``match`` returns still point into ``references``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"contamination threshold must be in (0, 1], got {threshold}")
    exact: dict[str, int] = {}
    sizes: list[int] = []
    postings: dict[str, list[int]] = {}
    for i, text in enumerate(references):
        norm = normalise(text)
        sh = shingles(text) if norm else frozenset()
        sizes.append(len(sh))
        if not norm:
            continue
        exact.setdefault(norm, i)
        for s in sh:
            postings.setdefault(s, []).append(i)
    return ContaminationIndex(
        threshold=threshold,
        size=len(sizes),
        exact=exact,
        sizes=tuple(sizes),
        postings={s: tuple(refs) for s, refs in postings.items()},
    )
