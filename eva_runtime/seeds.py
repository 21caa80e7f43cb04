"""The one way a run derives seeds: from the run's ``spec.seed`` and where the choice is made.

Every random choice of a run (the held-out split, the creator's sampling and buffer, the
evolver, a batch of generations, a request to a server, training) is seeded by
``derive_seed(seed, *where)``. Hashing rather than adding keeps nearby ``(seed, index)``
pairs from colliding, and 31 bits fit every server's and library's idea of a seed. The
values are pinned by ``tests/unit/test_seeds.py``: changing this function changes every
sample a run draws (and so every figure measured from one), so it is a change of behaviour,
not a refactor.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one random choice: ``seed`` and ``parts`` joined by ``:``,
    hashed with sha256, the first four bytes read little-endian."""
    key = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF
