"""What a report reads of a run directory, tolerant of a run that stopped half-way."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from eva_runtime.artifacts import PREPARE, RunDir
from eva_runtime.report.markup import _missing
from eva_runtime.spec import steps_for
from eva_runtime.status import HEAD_TO_HEAD

BASELINE_NOTE = "creator disabled (baseline)"


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


class _Run:
    """What a run directory holds; every reader returns None for a step that is not complete."""

    def __init__(self, path: str | Path):
        from eva_runtime.errors import InputError
        from eva_runtime.summary import summary_rows

        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a run directory (no such folder)")
        self.rd = RunDir(self.path)
        manifest = self.path / "evarun.yaml"
        doc: dict[str, Any] = {}
        if manifest.exists():
            from eva_runtime import safe_yaml

            try:
                loaded = safe_yaml.load(manifest.read_text(encoding="utf-8", errors="replace"))
            except (yaml.YAMLError, ValueError, OSError):
                loaded = None  # the report names what it cannot read instead of failing
            doc = loaded if isinstance(loaded, dict) else {}
        self.has_manifest = bool(doc)
        self.spec: dict[str, Any] = _get(doc, "spec", default={}) or {}
        self.name = str(_get(doc, "metadata", "name", default=None) or self.path.name)
        self.namespace = str(
            _get(doc, "metadata", "namespace", default=None) or self.path.parent.name
        )
        self.iterations = RunDir(self.path).iterations()
        if not self.has_manifest and not self.iterations and not self.rd.prepare().path.exists():
            raise InputError(
                f"{self.path}: not a run directory (no evarun.yaml, no prepare step, no iter-* "
                "folders)"
            )
        enabled = _get(self.spec, "creator", "enabled", default=None)
        if enabled is None:  # the spec's default, or a guess from the folders without one
            enabled = (
                self.has_manifest
                or not self.iterations
                or any((self.path / f"iter-{t}" / "create").exists() for t in self.iterations)
            )
        self.creator = bool(enabled)
        self.benchmarks: list[dict[str, Any]] = [
            b
            for b in (_get(self.spec, "evaluation", "benchmarks", default=None) or [])
            if isinstance(b, dict)
        ]
        self.planned = int(_get(self.spec, "iterations", default=0) or 0)
        last = self.iterations[-1] + 1 if self.iterations else 0
        self.rows: list[dict[str, Any]] = summary_rows(self.rd, last)
        self._prompts: dict[str, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def steps(self) -> tuple[str, ...]:
        return steps_for(self.creator, bool(self.benchmarks))

    def counts(self, t: int, step: str) -> dict[str, Any]:
        sd = self.rd.step(t, step)
        return sd.summary().get("counts", {}) if sd.complete() else {}

    def head_to_head(self) -> bool:
        """Whether the evaluations compared policies directly (a pairwise reward)."""
        for t in self.iterations:
            sd = self.rd.step(t, "evaluate")
            if sd.complete():
                return bool(sd.summary().get("comparison") == HEAD_TO_HEAD)
        return False

    def time_parts(self, t: int, step: str) -> dict[str, float] | None:
        """Seconds per part of a complete step (None for a step recorded without them)."""
        sd = self.rd.step(t, step)
        parts = _get(sd.summary(), "timings", "phases") if sd.complete() else None
        return parts if isinstance(parts, dict) else None

    def seconds(self, t: int, step: str) -> float | None:
        sd = self.rd.step(t, step)
        return _get(sd.summary(), "timings", "seconds") if sd.complete() else None

    def frame(self, t: int, step: str, name: str) -> pd.DataFrame | None:
        sd = self.rd.step(t, step)
        path = sd.path / name
        if not sd.complete() or not path.exists():
            return None
        return pd.read_parquet(path)

    def prepared(self, name: str) -> pd.DataFrame | None:
        sd = self.rd.prepare()
        path = sd.path / name
        if not sd.complete() or not path.exists():
            return None
        return pd.read_parquet(path)

    def missing(self) -> list[str]:
        """Steps the spec asks for that have no ``_SUCCESS.json``, named as folders."""
        out = []
        if not self.rd.prepare().complete():
            out.append(
                PREPARE + (" (started, not complete)" if (self.path / PREPARE).exists() else "")
            )
        for t in range(self.expected_iterations):
            if not (self.path / f"iter-{t}").exists():
                out.append(f"iter-{t} (not started)")
                continue
            for step in self.steps:
                sd = self.rd.step(t, step)
                if not sd.complete():
                    started = " (started, not complete)" if sd.path.exists() else ""
                    out.append(f"iter-{t}/{step}{started}")
        return out

    @property
    def expected_iterations(self) -> int:
        return max([self.planned, *(t + 1 for t in self.iterations)])

    def missing_for(self, step: str) -> list[str]:
        """``iter-t/step`` for every expected iteration where that step is not complete."""
        return [
            f"iter-{t}/{step}"
            for t in range(self.expected_iterations)
            if not self.rd.step(t, step).complete()
        ]

    def no_data(self, *steps: str) -> str:
        """The notice for a section none of whose input steps has completed yet."""
        names = [m for step in steps for m in self.missing_for(step)]
        names = names or [f"iter-0/{steps[0]}"]
        return _missing(
            f"No {' / '.join(steps)} step is complete yet (missing: {', '.join(names)})."
        )

    def prompt_texts(self) -> dict[str, str]:
        """Prompt id -> text over the seed set and every evolved set (parents' text lookup)."""
        if self._prompts is None:
            texts: dict[str, str] = {}
            frames = [self.prepared("train.parquet"), self.prepared("heldout.parquet")]
            for t in self.iterations:
                frames += [
                    self.frame(t, "create", "evolved.parquet"),
                    self.frame(t, "create", "mixed.parquet"),
                ]
            for f in frames:
                if f is not None and {"prompt_id", "prompt"} <= set(f.columns):
                    texts.update(zip(f["prompt_id"].astype(str), f["prompt"], strict=True))
            self._prompts = texts
        return self._prompts

    def heldout_curve(self) -> list[tuple[str, float, float | None, float | None]]:
        """(label, mean held-out reward, its standard error, win rate vs the previous policy)."""
        curve: list[tuple[str, float | None, float | None, float | None]] = []
        for t in self.iterations:
            c = self.counts(t, "evaluate")
            if not c:
                break
            if not curve and c.get("reward_previous") is not None:
                curve.append(("base", c["reward_previous"], self._base_sem(t), None))
            curve.append(
                (f"iter {t}", c.get("reward_new"), c.get("reward_new_sem"), c.get("win_rate"))
            )
        return [(a, b, c, d) for a, b, c, d in curve if b is not None]

    def _base_sem(self, t: int) -> float | None:
        frame = self.frame(t, "evaluate", "responses.parquet")
        if frame is None or "policy" not in frame.columns:
            return None
        prev = frame.loc[frame["policy"] == "previous", "reward"].to_numpy(dtype=float)
        if len(prev) < 2:
            return None
        return float(prev.std(ddof=1) / math.sqrt(len(prev)))

    def history(self, t: int) -> pd.DataFrame | None:
        frame = self.frame(t, "train", "history.parquet")
        if frame is None or "loss" not in frame.columns:
            return None
        frame = frame[frame["loss"].notna()]
        if "step" not in frame.columns:
            frame = frame.assign(step=np.arange(1, len(frame) + 1))
        return frame.reset_index(drop=True) if len(frame) else None


def _is_dpo(run: _Run) -> bool:
    """Sigmoid DPO, whose loss starts at ln 2 (other loss types start elsewhere)."""
    algorithm = _get(run.spec, "solver", "algorithm", default="dpo")
    return bool(
        algorithm == "dpo" and _get(run.spec, "solver", "lossType", default="sigmoid") == "sigmoid"
    )
