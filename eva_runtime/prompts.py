"""Reading prompt sources: jsonl, json, parquet and csv, with errors that name file and line.

Decisions (documented in the README):
* malformed JSON lines and CSV rows, non-UTF-8 bytes, a missing prompt column, a row
  without the prompt field or with a null or non-text prompt, and duplicate ids are
  errors, reported once with the file and line (or row);
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
    """The source's bytes (gzip undone); every way to fail named with the source."""
    where = f"{source} (spec.prompts.source)"
    if source.startswith(("http://", "https://")):
        data = _http_bytes(source, where)
        return _gunzip(data, where) if source.split("?")[0].endswith(".gz") else data
    if "://" in source and not source.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(source, "rb", compression="infer") as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            raise InputError(f"{where}: prompt file not found") from None
        except ImportError as exc:  # e.g. s3:// without s3fs
            raise InputError(f"{where}: this kind of URI needs another package ({exc})") from None
        except ValueError as exc:  # an unknown protocol
            raise InputError(f"{where}: cannot open this URI ({exc})") from None
        except Exception as exc:  # refused connections, HTTP errors, credentials
            raise InputError(
                f"{where}: cannot read it ({type(exc).__name__}: {exc})"[:600]
            ) from None
    path = Path(source.removeprefix("file://"))
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"{where}: a symbolic link that leads nowhere (a loop or a missing target)"
        )
    if not path.exists():
        raise InputError(f"{where}: prompt file not found")
    if path.is_dir():
        raise InputError(f"{where}: is a folder; spec.prompts.source must be a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    return _gunzip(data, where) if source.endswith(".gz") else data


def _gunzip(data: bytes, where: str) -> bytes:
    import gzip
    import zlib

    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{where}: ends in .gz but is not gzip data ({exc})") from None


HTTP_TIMEOUT_SECONDS = 60


def _http_bytes(source: str, where: str) -> bytes:
    """GET over HTTP(S): a 404 is "not found", a refused connection or a timeout says so."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(source, timeout=HTTP_TIMEOUT_SECONDS) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise InputError(f"{where}: prompt file not found (HTTP 404)") from None
        raise InputError(f"{where}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{where}: cannot connect ({reason})") from None


def _csv_records(source: str, text: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """The header and (first line of the row, row) pairs: a quoted field may span lines."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        rows: list[tuple[int, dict[str, Any]]] = []
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) > len(header):
                    raise InputError(
                        f"{source}:{start}: {len(row)} fields where the header has {len(header)}"
                    )
                rows.append((start, dict(zip(header, row, strict=False))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{source}:{reader.line_num}: not valid CSV ({exc})") from None
    return header, rows


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
        except RecursionError:
            raise InputError(f"{source}: nested too deeply to be a prompt file") from None
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise InputError(f"{source}: a .json prompt file must be a list of objects")
        columns = sorted({k for r in doc for k in r})
        recs = [(i + 1, r) for i, r in enumerate(doc)]
        unit = "row"
    elif fmt == ".parquet":
        import io

        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise InputError(f"{source}: not a readable parquet file ({exc})") from None
        columns = [str(c) for c in frame.columns]
        recs = [(i + 1, r) for i, r in enumerate(frame.to_dict("records"))]
        unit = "row"
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InputError(f"{source}:{line}: not UTF-8 (byte {exc.start})") from None
        columns, recs = _csv_records(source, text)
        unit = "line"
    if column not in columns:
        raise InputError(
            f"{source}: no {column!r} column (found: {', '.join(map(str, columns))}); "
            "set spec.prompts.column"
        )
    return recs, unit


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
        if column not in rec:
            found = ", ".join(sorted(map(str, rec))) or "none"
            raise InputError(
                f"{where}: no {column!r} field (this {unit} has: {found}); every {unit} needs one"
            )
        text = rec[column]
        if text is None or (isinstance(text, float) and text != text):
            raise InputError(f"{where}: {column!r} is null; it must be text")
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
