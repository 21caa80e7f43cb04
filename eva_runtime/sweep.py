"""Sweeps: one base manifest, a grid of spec overrides (cells) x seeds, each an ordinary run.

``eva sweep FILE --seeds 42,1,2 --set creator.enabled=true,false`` expands the grid, checks
every cell's manifest before anything runs, and runs the cells seed by seed, each in its own
run directory under the sweep folder::

    SWEEP/sweep.json                         the base manifest, every invocation's grid
    SWEEP/cells/<cell>/cell.json             the cell's overrides
    SWEEP/cells/<cell>/seed-<seed>/          an ordinary run directory (resumes like any run)

Running the same command again continues where it stopped; another ``--set`` adds cells to
the same folder (the base manifest may differ only in the fields a run may change). ``--emit
DIR`` writes the same runs as EvaRun manifests, labelled with the sweep and the cell.

The expansion, naming and statistics are pure functions over plain data; reading run
directories and running steps happen in :func:`run_sweep`, :func:`emit_sweep` and
:func:`collect`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eva_runtime import safe_yaml
from eva_runtime.api import ANNOTATION_SWEEP_OVERRIDES as ANNOTATION_OVERRIDES
from eva_runtime.api import LABEL_SEED, LABEL_SWEEP
from eva_runtime.api import LABEL_SWEEP_CELL as LABEL_CELL
from eva_runtime.errors import EvaError, InputError
from eva_runtime.spec import (
    EvaRun,
    EvaRunSpec,
    SpecError,
    dump_run,
    mutable_fields_text,
    parse_run,
    spec_changes,
)

SWEEP_FILE = "sweep.json"
CELL_FILE = "cell.json"
CELLS_DIR = "cells"
BASE_CELL = "base"  # the name of the cell without overrides
MAX_SEEDS = 1000
MAX_CELLS = 1000
BOOTSTRAP_ROUNDS = 10_000
BOOTSTRAP_SEED = 0
MIN_SEEDS_FOR_VERDICT = 3
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Cell:
    """One combination of overrides: (spec path, value) pairs, in the order of the flags."""

    overrides: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        """``path=value,...`` as typed (values in JSON), or ``base`` for no overrides."""
        if not self.overrides:
            return BASE_CELL
        return ",".join(f"{p}={_value_text(v)}" for p, v in self.overrides)

    @property
    def key(self) -> str:
        """A short stable id (Kubernetes names and labels): a digest of the overrides."""
        text = json.dumps(self.overrides_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def folder(self) -> str:
        """The cell's folder name: its readable name when that is a safe, short file name."""
        name = self.name
        if len(name) <= 120 and not _SAFE.search(name) and name not in (".", ".."):
            return name
        return f"{_SAFE.sub('_', name)[:100]}-{self.key}"

    def overrides_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_seeds(text: str) -> list[int]:
    """``42,1,2`` -> [42, 1, 2]; every seed a distinct integer >= 0."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]{1,10}", part):
            raise InputError(f"--seeds {text!r}: {part!r} is not a whole number >= 0")
        seed = int(part)
        if seed in seeds:
            raise InputError(f"--seeds {text!r}: seed {seed} is given twice")
        seeds.append(seed)
    if len(seeds) > MAX_SEEDS:
        raise InputError(f"--seeds: {len(seeds)} seeds; at most {MAX_SEEDS}")
    return seeds


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``creator.informativeness=gap,variance`` -> ("creator.informativeness", [...]).

    The path is a spec field in the manifest's camelCase (``spec.`` in front is optional);
    each value is read as YAML, so ``true``, ``4`` and ``3e-5`` are typed as in a manifest.
    """
    path, sep, values = text.partition("=")
    path = path.strip().removeprefix("spec.")
    where = f"--set {text!r}"
    if not sep or not path:
        raise InputError(
            f"{where}: expected PATH=VALUE[,VALUE...], e.g. creator.enabled=true,false"
        )
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*", path):
        raise InputError(f"{where}: {path!r} is not a dotted spec path like creator.enabled")
    if path == "seed":
        raise InputError(f"{where}: the seed is what --seeds sets; give the seeds there")
    parsed: list[Any] = []
    for raw in values.split(","):
        raw = raw.strip()
        if not raw:
            raise InputError(f"{where}: an empty value (two commas, or one at the end)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError(f"{where}: {raw!r} is not a YAML scalar") from None
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 3e-5 as text; a manifest's field takes it
        if isinstance(value, dict | list):
            raise InputError(f"{where}: {raw!r}: values are scalars (one field per --set)")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {raw!r} is not a finite number")
        if value in parsed:
            raise InputError(f"{where}: the value {raw!r} is given twice")
        parsed.append(value)
    return path, parsed


def grid(sets: Sequence[tuple[str, Sequence[Any]]]) -> list[Cell]:
    """Every combination of the ``--set`` values (the first flag varies slowest)."""
    paths = [p for p, _ in sets]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        raise InputError(f"--set {dup[0]} is given twice; list its values in one flag")
    cells = [
        Cell(tuple(zip(paths, combo, strict=True)))
        for combo in itertools.product(*(v for _, v in sets))
    ]
    if len(cells) > MAX_CELLS:
        raise InputError(f"--set: {len(cells)} cells; at most {MAX_CELLS}")
    return cells


def _check_path(path: str) -> None:
    """The path names a field of the spec model (camelCase), not a section or a typo."""
    model: Any = EvaRunSpec
    seen: list[str] = []
    for part in path.split("."):
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            where = ".".join(["spec", *seen])
            known = ", ".join(sorted(fields))
            raise InputError(f"--set spec.{path}: {where} has no field {part!r} (fields: {known})")
        seen.append(part)
        sub = _model_of(field.annotation)
        if sub is None:
            if len(seen) < len(path.split(".")):
                raise InputError(
                    f"--set spec.{path}: spec.{'.'.join(seen)} is a value, not a section"
                )
            return
        model = sub
    raise InputError(f"--set spec.{path}: is a section; name one of its fields")


def _model_of(annotation: Any) -> Any:
    """The pydantic model a field holds (also inside ``X | None``), or None for a value."""
    from typing import get_args

    from pydantic import BaseModel

    candidates = [annotation, *get_args(annotation)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def apply_overrides(base: EvaRun, cell: Cell, seed: int, *, sweep: str) -> EvaRun:
    """The cell's run for ``seed``: the base manifest with the overrides, seed, name, labels."""
    doc = base.model_dump(by_alias=True, exclude_none=True, mode="json")
    for path, value in cell.overrides:
        _check_path(path)
        node = doc["spec"]
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    doc["spec"]["seed"] = seed
    meta = doc["metadata"]
    meta["name"] = run_name(sweep, cell, seed)
    meta["labels"] = {
        **(meta.get("labels") or {}),
        LABEL_SWEEP: sweep,
        LABEL_CELL: cell.key,
        LABEL_SEED: str(seed),
    }
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        ANNOTATION_OVERRIDES: json.dumps(cell.overrides_dict(), sort_keys=True),
    }
    try:
        return parse_run(doc, f"--set {cell.name}" if cell.overrides else "the base manifest")
    except SpecError as exc:
        raise InputError(str(exc)) from None


def run_name(sweep: str, cell: Cell, seed: int) -> str:
    """``<sweep>-<cell key>-s<seed>``, a DNS label of at most 63 characters."""
    tail = f"-{cell.key}-s{seed}"
    return sweep[: 63 - len(tail)].rstrip("-") + tail


def plan_runs(
    base: EvaRun, cells: Sequence[Cell], seeds: Sequence[int], *, sweep: str
) -> list[tuple[Cell, int, EvaRun]]:
    """Every (cell, seed, manifest), seed by seed (so paired results arrive early); every
    manifest validated first, so a bad ``--set`` fails before any work."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", sweep) or len(sweep) > 40:
        raise InputError(
            f"--name {sweep!r}: a sweep name is a DNS label of at most 40 characters "
            "(lowercase letters, digits, '-')"
        )
    errors: list[str] = []
    runs: list[tuple[Cell, int, EvaRun]] = []
    for cell in cells:
        try:
            apply_overrides(base, cell, seeds[0], sweep=sweep)
        except InputError as exc:
            errors.append(str(exc))
    if errors:
        raise InputError("\n".join(dict.fromkeys(errors)))
    for seed in seeds:
        for cell in cells:
            runs.append((cell, seed, apply_overrides(base, cell, seed, sweep=sweep)))
    return runs


# --------------------------------------------------------------------------- running


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None


def _write_json(path: Path, data: Any) -> None:
    from eva_runtime.artifacts import atomic_write_json

    atomic_write_json(path, data)


def record_sweep(
    root: Path, base: EvaRun, cells: Sequence[Cell], seeds: Sequence[int], *, sweep: str
) -> None:
    """Write (or extend) ``sweep.json``; refuse a folder that holds another sweep."""
    path = root / SWEEP_FILE
    base_yaml = dump_run(base)
    invocation = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seeds": list(seeds),
        "cells": [c.overrides_dict() for c in cells],
    }
    if path.exists():
        old = _read_json(path)
        if not isinstance(old, dict) or "base" not in old:
            raise InputError(f"{path}: not a sweep definition (no 'base')")
        if old.get("name") != sweep:
            raise InputError(
                f"{root} holds the sweep {old.get('name')!r}, not {sweep!r}: use another "
                "--workdir or the same --name"
            )
        try:
            recorded = parse_run(safe_yaml.load(str(old["base"])), f"{path} (base)")
        except SpecError as exc:
            raise InputError(str(exc)) from None
        except (yaml.YAMLError, ValueError) as exc:
            raise InputError(f"{path}: its base manifest is damaged ({exc})") from None
        changed = spec_changes(recorded, base)
        if changed:
            raise InputError(
                f"{root} holds a sweep of another base manifest ({', '.join(changed)} differ); "
                f"use another --workdir (only {mutable_fields_text()} may change)"
            )
        invocations = list(old.get("invocations") or [])
        if not invocations or {k: v for k, v in invocations[-1].items() if k != "at"} != {
            k: v for k, v in invocation.items() if k != "at"
        }:
            invocations.append(invocation)
        data = {**old, "base": base_yaml, "invocations": invocations}
    else:
        data = {"name": sweep, "base": base_yaml, "invocations": [invocation]}
    root.mkdir(parents=True, exist_ok=True)
    _write_json(path, data)
    for cell in cells:
        cdir = root / CELLS_DIR / cell.folder
        cdir.mkdir(parents=True, exist_ok=True)
        cell_file = cdir / CELL_FILE
        meta = {"name": cell.name, "key": cell.key, "overrides": cell.overrides_dict()}
        if cell_file.exists():
            held = _read_json(cell_file)
            if not isinstance(held, dict) or held.get("key") != cell.key:
                raise InputError(f"{cell_file}: holds another cell than {cell.name!r}")
        else:
            _write_json(cell_file, meta)


def run_dir_of(root: Path, cell: Cell, seed: int) -> Path:
    return root / CELLS_DIR / cell.folder / f"seed-{seed}"


def run_sweep(
    base: EvaRun,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    root: Path,
    *,
    sweep: str,
    tracking: bool = True,
) -> list[tuple[Cell, int, str]]:
    """Run every cell x seed (complete runs are skipped step by step); the failures."""
    from eva_runtime.progress import note, warn
    from eva_runtime.runner import preflight, run_all

    runs = plan_runs(base, cells, seeds, sweep=sweep)
    for cell, _seed, run in runs[: len(cells)]:  # each cell's models, files, reward function
        try:
            preflight(run)
        except EvaError as exc:
            raise EvaError(f"cell {cell.name}: {exc}") from None
    record_sweep(root, base, cells, seeds, sweep=sweep)
    failures: list[tuple[Cell, int, str]] = []
    for i, (cell, seed, run) in enumerate(runs, 1):
        note(f"sweep {sweep}: run {i}/{len(runs)}: cell {cell.name}, seed {seed}")
        try:
            run_all(run, check=False, tracking=tracking, run_dir=run_dir_of(root, cell, seed))
        except (EvaError, ValueError) as exc:
            warn(f"sweep {sweep}: cell {cell.name}, seed {seed} failed: {exc}")
            failures.append((cell, seed, str(exc)))
    return failures


def emit_sweep(
    base: EvaRun, cells: Sequence[Cell], seeds: Sequence[int], out: Path, *, sweep: str
) -> list[Path]:
    """One EvaRun manifest per cell and seed in ``out`` (``kubectl apply -f out``)."""
    from eva_runtime.artifacts import atomic_write_bytes

    runs = plan_runs(base, cells, seeds, sweep=sweep)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for _cell, _seed, run in runs:
        path = out / f"{run.name}.yaml"
        atomic_write_bytes(path, dump_run(run).encode())
        written.append(path)
    return written


# --------------------------------------------------------------------------- statistics


def mean_sem(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error of the mean (sample standard deviation / sqrt n) and n."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "sem": None, "n": 0}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "sem": None, "n": 1}
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return {"mean": mean, "sem": math.sqrt(var / n), "n": n}


def bootstrap_interval(
    diffs: Sequence[float],
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of paired differences (seeded)."""
    import numpy as np

    xs = np.asarray([d for d in diffs if d is not None and math.isfinite(d)], dtype=np.float64)
    if xs.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, xs.size, size=(rounds, xs.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired(cell: Mapping[int, float | None], ref: Mapping[int, float | None]) -> dict[str, Any]:
    """Per-seed differences cell - reference over the seeds both have, with their statistics.

    ``verdict`` says it plainly: ``within noise`` when the 95% bootstrap interval holds 0,
    else ``higher`` / ``lower``; ``too few seeds`` under ``MIN_SEEDS_FOR_VERDICT`` paired seeds,
    ``no paired seeds`` before any.
    """
    seeds = sorted(s for s in cell if s in ref and cell[s] is not None and ref[s] is not None)
    diffs = [float(cell[s]) - float(ref[s]) for s in seeds]  # type: ignore[arg-type]
    stats = mean_sem(diffs)
    ci = bootstrap_interval(diffs)
    if not seeds:
        verdict = "no paired seeds"
    elif len(seeds) < MIN_SEEDS_FOR_VERDICT:
        verdict = "too few seeds"  # two seeds give three distinct resamples: no interval
    elif ci is None or ci[0] <= 0.0 <= ci[1]:
        verdict = "within noise"
    else:
        verdict = "higher" if ci[0] > 0 else "lower"
    return {
        "seeds": seeds,
        "diffs": diffs,
        **stats,
        "ci95": list(ci) if ci else None,
        "verdict": verdict,
        "higher_on": sum(d > 0 for d in diffs),
    }


# --------------------------------------------------------------------------- reading a sweep


@dataclass
class CellResult:
    cell: Cell
    folder: Path
    runs: dict[int, dict[str, Any]]  # seed -> what the run directory says (see _read_run)


def _read_run(path: Path) -> dict[str, Any]:
    """Held-out curve, spend and final responses of one run directory (what is complete)."""
    from eva_runtime.artifacts import RunDir
    from eva_runtime.summary import spend

    rd = RunDir(path)
    iterations = len(rd.iterations())
    curve: list[float] = []  # base, after iter 0, after iter 1, ...
    win_rates: list[float | None] = []
    for t in range(iterations):
        sd = rd.step(t, "evaluate")
        if not sd.complete():
            break
        counts = sd.summary().get("counts")
        if not isinstance(counts, dict):
            raise InputError(f"{sd.marker}: damaged, no 'counts' object")
        if "reward_new" not in counts:
            break
        if t == 0:
            curve.append(float(counts["reward_previous"]))
        curve.append(float(counts["reward_new"]))
        win_rates.append(counts.get("win_rate"))
    # Independent benchmarks: per name, the score of the base policy, then of each iteration's.
    from eva_runtime.status import bench_results

    bench: dict[str, list[float | None]] = {}
    for t in range(iterations):
        sd = rd.step(t, "benchmark")
        if not sd.complete():
            break
        counts = sd.summary().get("counts")
        for name, r in bench_results(counts if isinstance(counts, dict) else {}).items():
            series = bench.setdefault(name, [None] * (t + 1 if t else 0))
            if t == 0:
                series.append(_number(r.get("base_score")))
            series.append(_number(r.get("score")))
    return {
        "path": str(path),
        "heldout": curve,
        "win_rates": win_rates,
        "benchmarks": bench,
        "spend": spend(rd, iterations),
        "final_responses": rd.step(len(curve) - 2, "evaluate").path / "responses.parquet"
        if len(curve) >= 2
        else None,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def collect(root: Path) -> tuple[dict[str, Any], list[CellResult]]:
    """The sweep definition and every cell with the runs found under it."""
    root = Path(root)
    if not (root / SWEEP_FILE).is_file():
        raise InputError(f"{root}: not a sweep folder (no {SWEEP_FILE}); run eva sweep first")
    definition = _read_json(root / SWEEP_FILE)
    if not isinstance(definition, dict):
        raise InputError(f"{root / SWEEP_FILE}: not a sweep definition")
    results: list[CellResult] = []
    cells_dir = root / CELLS_DIR
    for cdir in sorted(cells_dir.iterdir() if cells_dir.is_dir() else []):
        if not (cdir / CELL_FILE).is_file():
            continue
        meta = _read_json(cdir / CELL_FILE)
        overrides = meta.get("overrides") if isinstance(meta, dict) else None
        if not isinstance(overrides, dict):
            raise InputError(f"{cdir / CELL_FILE}: no 'overrides' mapping")
        cell = Cell(tuple(overrides.items()))
        runs: dict[int, dict[str, Any]] = {}
        for rdir in sorted(cdir.glob("seed-*")):
            m = re.fullmatch(r"seed-([0-9]+)", rdir.name)
            if m and rdir.is_dir():
                runs[int(m.group(1))] = _read_run(rdir)
        results.append(CellResult(cell=cell, folder=cdir, runs=runs))
    order = [
        Cell(tuple(c.items())).key
        for inv in definition.get("invocations") or []
        for c in inv.get("cells") or []
    ]
    results.sort(key=lambda r: order.index(r.cell.key) if r.cell.key in order else len(order))
    return definition, results


def pick_reference(cells: Sequence[CellResult], reference: str | None) -> CellResult:
    """The cell the others are compared with: ``reference`` (a cell name), else the one
    baseline cell (``creator.enabled=false``), else the first."""
    if not cells:
        raise InputError("the sweep has no cells yet")
    if reference is not None:
        for c in cells:
            if reference in (c.cell.name, c.cell.key, c.folder.name):
                return c
        names = ", ".join(c.cell.name for c in cells)
        raise InputError(f"--reference {reference!r}: no such cell (cells: {names})")
    baselines = [c for c in cells if c.cell.overrides_dict().get("creator.enabled") is False]
    return baselines[0] if len(baselines) == 1 else cells[0]


def final_heldout(run: Mapping[str, Any], depth: int) -> float | None:
    """The newest policy's held-out reward, if the run has evaluated ``depth`` policies (the
    base and each iteration's): runs that stopped earlier are not compared with full ones."""
    curve = run["heldout"]
    return float(curve[-1]) if curve and len(curve) == depth else None


def response_win_rate(a: Path | None, b: Path | None) -> float | None:
    """How often run A's final policy beats run B's on the same held-out (prompt, sample)
    (ties count half): meaningful for two runs of one seed, which share prompts and draws."""
    import pandas as pd

    from eva_runtime.phases.evaluate import win_rate

    if a is None or b is None or not Path(a).exists() or not Path(b).exists():
        return None
    fa, fb = pd.read_parquet(a), pd.read_parquet(b)
    fa, fb = fa[fa["policy"] == "new"], fb[fb["policy"] == "new"]
    m = fa.merge(fb, on=["prompt_id", "sample"], suffixes=("_a", "_b"))
    if m.empty:
        return None
    return win_rate(m["reward_a"].to_numpy(), m["reward_b"].to_numpy())


def spend_totals(run: Mapping[str, Any]) -> dict[str, float]:
    from eva_runtime.summary import SPEND_FIELDS

    out: dict[str, float] = {k: 0.0 for k, _t, _p in SPEND_FIELDS}
    out["seconds"] = 0.0
    for row in run["spend"]:
        for k, _t, _p in SPEND_FIELDS:
            out[k] += row[k]
        out["seconds"] += sum(row["seconds"].values())
    return out


def summarise(
    definition: Mapping[str, Any], cells: Sequence[CellResult], reference: str | None = None
) -> dict[str, Any]:
    """The numbers of ``eva sweep report``: per cell, per metric mean/sem/n over seeds, per
    iteration; paired differences with the reference cell; spend relative to it."""
    ref = pick_reference(cells, reference)
    # Cells are compared on their newest policy once its runs have evaluated every iteration.
    full = max((len(r["heldout"]) for c in cells for r in c.runs.values()), default=0)
    ref_final = {s: final_heldout(r, full) for s, r in ref.runs.items()}
    out_cells = []
    for c in cells:
        finals = {s: final_heldout(r, full) for s, r in c.runs.items()}
        seeds = sorted(s for s, v in finals.items() if v is not None)
        unfinished = sorted(s for s, v in finals.items() if v is None)
        depth = max((len(r["heldout"]) for r in c.runs.values()), default=0)
        per_iter = []
        for k in range(depth):
            vals = {
                s: (r["heldout"][k] if k < len(r["heldout"]) else None) for s, r in c.runs.items()
            }
            per_iter.append(
                {
                    "policy": "base" if k == 0 else f"iter {k - 1}",
                    "heldout_reward": mean_sem([v for v in vals.values() if v is not None]),
                }
            )
        spent = {s: spend_totals(r) for s, r in c.runs.items()}
        spend_keys = sorted({k for v in spent.values() for k in v})
        entry: dict[str, Any] = {
            "name": c.cell.name,
            "key": c.cell.key,
            "overrides": c.cell.overrides_dict(),
            "seeds": seeds,
            "unfinished_seeds": unfinished,
            "heldout_reward": mean_sem([v for v in finals.values() if v is not None]),
            "heldout_gain": mean_sem(
                [
                    c.runs[s]["heldout"][-1] - c.runs[s]["heldout"][0]
                    for s in seeds
                    if len(c.runs[s]["heldout"]) >= 2
                ]
            ),
            "iterations": per_iter,
            "per_seed": {
                str(s): {
                    "heldout": c.runs[s]["heldout"],
                    "spend": spent[s],
                    # training-side tokens per iteration: the x axis of reward vs compute
                    "iterations_spend": [
                        row["generated_tokens"] + row["train_tokens"] for row in c.runs[s]["spend"]
                    ],
                }
                for s in sorted(c.runs)
            },
            "spend": {k: mean_sem([spent[s][k] for s in seeds])["mean"] for k in spend_keys},
            "reference": c is ref,
        }
        entry["benchmarks"] = _bench_summary(c, ref, full)
        if c is not ref:
            entry["vs_reference"] = paired(finals, ref_final)
            entry["vs_reference"]["win_rate"] = {
                str(s): response_win_rate(
                    c.runs[s]["final_responses"], ref.runs[s]["final_responses"]
                )
                for s in entry["vs_reference"]["seeds"]
            }
        out_cells.append(entry)
    ref_spend = next(e["spend"] for e in out_cells if e["reference"])
    for e in out_cells:
        e["spend_ratio"] = {
            k: (e["spend"][k] / ref_spend[k] if ref_spend.get(k) else None)
            for k in e["spend"]
            if e["spend"][k] is not None
        }
        if not e["reference"]:
            e["vs_reference"]["unequal_compute"] = equal_compute(e["spend_ratio"])
    return {
        "sweep": definition.get("name"),
        "reference": ref.cell.name,
        "cells": out_cells,
    }


def _bench_summary(c: CellResult, ref: CellResult, depth: int) -> dict[str, Any]:
    """Per benchmark: the newest policy's score over seeds (runs that benchmarked every
    policy), and its paired difference with the reference cell's."""

    def finals(cell: CellResult, name: str) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        for s, r in cell.runs.items():
            series = (r.get("benchmarks") or {}).get(name) or []
            out[s] = series[-1] if len(series) == depth and series else None
        return out

    names = sorted({n for r in c.runs.values() for n in (r.get("benchmarks") or {})})
    out: dict[str, Any] = {}
    for name in names:
        mine = finals(c, name)
        entry: dict[str, Any] = {"score": mean_sem([v for v in mine.values() if v is not None])}
        if c is not ref:
            entry["vs_reference"] = paired(mine, finals(ref, name))
        out[name] = entry
    return out


def equal_compute(ratio: Mapping[str, float | None], tolerance: float = 0.1) -> list[str]:
    """The training-side spend fields on which a cell differs from the reference by more than
    ``tolerance`` (relative): empty when the cells spent the same."""
    out = []
    for k in ("generated_tokens", "train_tokens"):
        r = ratio.get(k)
        if r is not None and abs(r - 1.0) > tolerance:
            out.append(k)
    return out
