"""Reading prompt sources: jsonl, json, parquet and csv, with errors that name file and line.

Decisions (documented in the README):
* malformed JSON lines, non-UTF-8 bytes, a missing prompt column, non-text prompts and
  duplicate ids are errors, reported once with the file and line (or row);
* empty or whitespace-only prompts are skipped and counted (``skipped['empty']``);
* without an id column, a prompt's id is derived from its text, and repeated texts are
  skipped and counted (``skipped['duplicate_text']``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eva_runtime.creator.evolve import prompt_id
from eva_runtime.errors import InputError

FORMATS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class PromptTable:
    ids: list[str]
    prompts: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"prompt_id": self.ids, "prompt": self.prompts})


def _format(source: str) -> str:
    name = source.split("?")[0].lower()
    for ext in FORMATS:
        if name.endswith(ext) or name.endswith(ext + ".gz"):
            return ext
    raise InputError(
        f"{source}: unknown prompt file type; use one of {', '.join(FORMATS)} (spec.prompts.source)"
    )


def _open_bytes(source: str) -> bytes:
    if "://" in source and not source.startswith("file://"):
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec is a dependency
            raise InputError(f"{source}: reading URIs needs fsspec") from exc
        try:
            with fsspec.open(source, "rb", compression="infer") as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            raise InputError(f"{source}: prompt file not found (spec.prompts.source)") from None
    path = Path(source.removeprefix("file://"))
    if not path.exists():
        raise InputError(f"{source}: prompt file not found (spec.prompts.source)")
    if path.is_dir():
        raise InputError(f"{source}: is a folder; spec.prompts.source must be a file")
    data = path.read_bytes()
    if source.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    return data


def _jsonl_records(source: str, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{source}:{lineno}: not UTF-8 (byte {exc.start} of the line); "
                "re-encode the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(rec, dict):
            raise InputError(f"{source}:{lineno}: each line must be a JSON object")
        yield lineno, rec


def _records(source: str, fmt: str, column: str) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """(line or row number, record) pairs and the word for a position ('line' or 'row')."""
    data = _open_bytes(source)
    if fmt == ".jsonl":
        recs = list(_jsonl_records(source, data))
        if recs and not any(column in r for _, r in recs):
            found = sorted({k for _, r in recs for k in r})
            raise InputError(
                f"{source}: no {column!r} field in any line (found: {', '.join(found)}); "
                "set spec.prompts.column"
            )
        return recs, "line"
    if fmt == ".json":
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise InputError(f"{source}: a .json prompt file must be a list of objects")
        frame = pd.DataFrame(doc)
    elif fmt == ".parquet":
        import io

        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise InputError(f"{source}: not a readable parquet file ({exc})") from None
    else:
        import io

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InputError(f"{source}:{line}: not UTF-8 (byte {exc.start})") from None
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if column not in frame.columns:
        raise InputError(
            f"{source}: no {column!r} column (found: {', '.join(map(str, frame.columns))}); "
            "set spec.prompts.column"
        )
    # Rows count from 1 like lines; csv rows count the header as line 1.
    offset = 2 if fmt == ".csv" else 1
    recs = [(i + offset, r) for i, r in enumerate(frame.to_dict("records"))]
    return recs, "line" if fmt == ".csv" else "row"


def load_prompts(
    source: str,
    *,
    column: str = "prompt",
    id_column: str | None = None,
    limit: int | None = None,
) -> PromptTable:
    fmt = _format(source)
    recs, unit = _records(source, fmt, column)
    table = PromptTable(ids=[], prompts=[])
    first_seen: dict[str, int] = {}
    for pos, rec in recs:
        if limit is not None and len(table.prompts) >= limit:
            break
        table.rows_read += 1
        where = f"{source}:{pos}" if unit == "line" else f"{source}, row {pos}"
        if column not in rec or rec[column] is None:
            table.skipped["missing_prompt"] = table.skipped.get("missing_prompt", 0) + 1
            continue
        text = rec[column]
        if not isinstance(text, str):
            raise InputError(f"{where}: {column!r} must be text, got {type(text).__name__}")
        if not text.strip():
            table.skipped["empty"] = table.skipped.get("empty", 0) + 1
            continue
        if id_column:
            raw_id = rec.get(id_column)
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                raise InputError(f"{where}: no {id_column!r} value (spec.prompts.idColumn)")
            pid = str(raw_id)
            if pid in first_seen:
                raise InputError(
                    f"{where}: duplicate id {pid!r} (first at {unit} {first_seen[pid]}); "
                    "prompt ids must be unique"
                )
        else:
            pid = prompt_id(text.strip())
            if pid in first_seen:
                table.skipped["duplicate_text"] = table.skipped.get("duplicate_text", 0) + 1
                continue
        first_seen[pid] = pos
        table.ids.append(pid)
        table.prompts.append(text.strip())
    if not table.prompts:
        raise InputError(
            f"{source}: no usable prompts (read {table.rows_read}, skipped {table.skipped or 0})"
        )
    return table
