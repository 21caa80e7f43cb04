"""The run directory: where each step's outputs live and how a step is known to be complete.

Layout: ``<run-dir>/prepare/`` once, then ``<run-dir>/iter-<t>/<step>/`` per iteration.
A step (or one shard of a sharded step) is complete only when its ``_SUCCESS.json``
exists. Every file is written under a temporary name and renamed into place, and the
marker is written last, so a killed step never leaves a file that looks whole. Running a
complete step again does nothing; an incomplete one is wiped and starts clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from eva_runtime.errors import StepError
from eva_runtime.spec import ITERATION_STEPS, PREPARE
from eva_runtime.timing import current as current_clock
from eva_runtime.timing import timed

MANIFEST = "evarun.yaml"  # the run's manifest, beside its artifacts
_ITER = re.compile(r"iter-(\d+)")

SUCCESS = "_SUCCESS.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Files up to this size are hashed when a complete step is trusted; larger ones (model
# weights) are checked by the size recorded in the marker.
HASH_LIMIT_BYTES = 64 * 1024 * 1024
_DIGESTS: dict[tuple[str, int, int], str] = {}
_WARNED: set[str] = (
    set()
)  # markers whose damage was reported in this process  # (path, size, mtime) -> sha256, per process


def _digest(path: Path) -> str | None:
    """sha256 of a file, remembered while its size and mtime stay the same; None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            _DIGESTS[key] = sha256_file(path)
        except OSError:
            return None
    return _DIGESTS[key]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_output(path: str | Path, data: bytes, what: str = "-o") -> Path:
    """Write a file the user named (a report, a CRD): atomically, its folder created, and a
    path that cannot take it (a folder, a file in the way, a full disk) named in the error."""
    from eva_runtime.errors import InputError

    target = Path(path)
    if target.is_dir():
        raise InputError(f"{what} {target}: is a folder; name the file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    except OSError as exc:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = "a file is in the way where its folder should be"
        else:
            reason = exc.strerror or str(exc)
        raise InputError(f"{what} {target}: cannot write it ({reason})") from None
    return target


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(path: Path, frame: pd.DataFrame) -> str:
    """Write atomically; return the file's sha256 (the artifact digest)."""
    with timed("write"):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        frame.to_parquet(tmp, index=False, compression="zstd")
        os.replace(tmp, path)
        return sha256_file(path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by a step; a damaged one is named with its path."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StepError(
            f"{path}: damaged, not a JSON object ({exc}); delete its step folder and run the "
            "step again"
        ) from None
    except IsADirectoryError:
        raise StepError(f"{path}: is a folder, not the step's JSON marker") from None
    if not isinstance(doc, dict):
        raise StepError(
            f"{path}: damaged, holds {type(doc).__name__} instead of a JSON object; delete its "
            "step folder and run the step again"
        )
    return doc


class StepDir:
    """One step's folder (or one shard's): begin, write outputs, finish."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._started = time.time()

    @property
    def marker(self) -> Path:
        return self.path / SUCCESS

    def complete(self) -> bool:
        """The marker exists and every file it lists still has its digest. A file that was
        truncated, changed or removed makes the step incomplete again (named in a warning):
        readers do not use it, and running it again (``begin``) redoes it in a clean folder."""
        if not self.marker.exists():
            return False
        damaged = self._damaged()
        if damaged is None:
            return True
        if str(self.marker) not in _WARNED:
            _WARNED.add(str(self.marker))
            from eva_runtime.progress import warn

            warn(
                f"{self.path / damaged}: does not match the digest in {SUCCESS}; the step is "
                "incomplete and runs again"
            )
        return False

    def _damaged(self) -> str | None:
        """The first listed file whose sha256 differs from the marker's (None: all match)."""
        try:
            marker = read_json(self.marker)
        except StepError:
            return None  # a damaged marker is reported by whoever reads it, with its path
        digests = marker.get("digests")
        if not isinstance(digests, dict):
            return None
        recorded = marker.get("sizes")
        sizes: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        for rel, expected in digests.items():
            file = self.path / str(rel)
            size = sizes.get(rel)
            if size is not None:
                try:
                    if file.stat().st_size != size:
                        return str(rel)
                except OSError:
                    return str(rel)
                if size > HASH_LIMIT_BYTES:
                    continue  # model weights: the size is checked, hashing would cost minutes
            if _digest(file) != expected:
                return str(rel)
        return None

    def summary(self) -> dict[str, Any]:
        if not self.complete():
            raise StepError(f"{self.path}: step is not complete (no {SUCCESS})")
        return read_json(self.marker)

    def begin(self, *, resume: bool = False) -> bool:
        """True if the step must run (folder wiped clean); False if already complete.

        ``resume`` keeps what an interrupted attempt wrote: for a step whose files are
        caches keyed by their content (the benchmark step's answers and judgments), so a
        killed attempt's work is not asked for again.
        """
        if self.complete():
            return False
        if self.path.exists() and not resume:
            shutil.rmtree(self.path)
        if self.marker.exists():
            self.marker.unlink()  # a damaged step's marker: the step runs again
        self.path.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        return True

    def finish(self, counts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        with timed("write"):  # hashing a saved model takes a while
            digests = {
                str(p.relative_to(self.path)): sha256_file(p)
                for p in sorted(self.path.rglob("*"))
                if p.is_file() and p.name != SUCCESS and not p.name.startswith(".")
            }
        seconds = round(time.time() - self._started, 3)
        timings: dict[str, Any] = {"started": self._started, "seconds": seconds}
        clock = current_clock()
        if clock is not None:  # where the time went: see eva_runtime.timing
            timings["phases"] = clock.breakdown(seconds)
            timings["loads"] = clock.loads
        summary = {
            "counts": counts,
            "digests": digests,
            "sizes": {rel: (self.path / rel).stat().st_size for rel in digests},
            "timings": timings,
            **extra,
        }
        atomic_write_json(self.marker, summary)
        return summary


class RunDir:
    """Paths of one run's artifacts; no I/O beyond existence checks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def prepare(self) -> StepDir:
        return StepDir(self.path / PREPARE)

    def iterations(self) -> list[int]:
        """The iterations that have a folder (``iter-<t>``), in order."""
        if not self.path.is_dir():
            return []
        return sorted(
            int(m.group(1))
            for p in self.path.iterdir()
            if p.is_dir() and (m := _ITER.fullmatch(p.name))
        )

    def write_manifest(self, text: str) -> None:
        """Keep the run's manifest (``evarun.yaml``) beside its artifacts; written atomically,
        and only when it changed."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / MANIFEST
        data = text.encode()
        if not path.exists() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    def step(self, iteration: int, step: str) -> StepDir:
        if step not in ITERATION_STEPS:
            raise ValueError(f"unknown step {step!r}; one of {', '.join(ITERATION_STEPS)}")
        return StepDir(self.path / f"iter-{iteration}" / step)

    def shard(self, iteration: int, step: str, shard: int, num_shards: int) -> StepDir:
        return StepDir(self.step(iteration, step).path / f"shard-{shard:05d}-of-{num_shards:05d}")

    def shards_complete(self, iteration: int, step: str, num_shards: int) -> bool:
        return all(self.shard(iteration, step, i, num_shards).complete() for i in range(num_shards))

    def policy(self, iteration: int, base: str) -> str:
        """The policy that iteration ``iteration`` starts from."""
        if iteration == 0:
            return base
        model = self.step(iteration - 1, "train").path / "model"
        if not (model / "config.json").exists():
            raise StepError(
                f"{model}: the policy of iteration {iteration} is missing; "
                f"run the train step of iteration {iteration - 1} first"
            )
        return str(model)

    def require(self, step: StepDir, what: str) -> dict[str, Any]:
        if not step.complete():
            raise StepError(f"{step.path}: {what} is not complete; run it first")
        return step.summary()
