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
from eva_runtime.spec import PREPARE, STEPS

MANIFEST = "evarun.yaml"  # the run's manifest, beside its artifacts
_ITER = re.compile(r"iter-(\d+)")

SUCCESS = "_SUCCESS.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        return self.marker.exists()

    def summary(self) -> dict[str, Any]:
        if not self.complete():
            raise StepError(f"{self.path}: step is not complete (no {SUCCESS})")
        return read_json(self.marker)

    def begin(self) -> bool:
        """True if the step must run (folder wiped clean); False if already complete."""
        if self.complete():
            return False
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._started = time.time()
        return True

    def finish(self, counts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        digests = {
            str(p.relative_to(self.path)): sha256_file(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != SUCCESS and not p.name.startswith(".")
        }
        summary = {
            "counts": counts,
            "digests": digests,
            "timings": {"started": self._started, "seconds": round(time.time() - self._started, 3)},
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
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; one of {', '.join(STEPS)}")
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
