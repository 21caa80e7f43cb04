"""The question and answer files of each suite, in their public JSONL layouts.

Accepted (field names as the public repositories write them):

* arena-hard questions: ``{"question_id", "turns": [{"content"}], "category"?}`` (v0.1) or
  ``{"uid", "prompt", "category"?}`` (v2). Baseline answers: ``{"question_id",
  "choices": [{"turns": [{"content"}]}]}`` (v0.1) or ``{"uid", "messages": [..., {"role":
  "assistant", "content": {"answer"} | str}]}`` (v2).
* mt-bench questions: ``{"question_id", "category", "turns": [str, str], "reference"?:
  [str, ...]}``; reference answers (``--answers``): ``{"question_id", "choices": [{"turns":
  [str, ...]}]}``.
* alpaca-eval: a JSON list or JSONL of ``{"instruction", "output"?, "dataset"?,
  "generator"?}``; the reference outputs (``--answers``, else the questions file's own
  ``output``) are matched to the instructions by their text.

Anything else is an ``InputError`` naming the file and line (or list item).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_runtime.errors import InputError
from eva_runtime.spec import BENCH_SUITES as SUITES

# MT-Bench's answer temperature per category (FastChat's temperature_config); others 0.7.
MT_BENCH_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
# The categories MT-Bench grades against a reference answer when one is given.
MT_BENCH_NEEDS_REFERENCE = ("math", "reasoning", "coding")


@dataclass(frozen=True)
class Question:
    """One benchmark item: its id, the user turns, category, and reference answers if any."""

    id: str
    turns: tuple[str, ...]
    category: str = ""
    reference: tuple[str, ...] = ()


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _records(path: Path, *, allow_list: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(location, object) per record of a JSONL file (or a JSON list when allowed)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{_where(path, bad)}: not UTF-8 text") from None
    stripped = text.lstrip()
    if allow_list and stripped.startswith("["):
        try:
            items = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = _where(path, getattr(exc, "lineno", 1))
            raise InputError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(f"{path}: item {i}: not a JSON object")
            out.append((f"{path}: item {i}", item))
        return out
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = getattr(exc, "msg", "nested too deeply")
            raise InputError(f"{_where(path, number)}: not valid JSON ({msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{_where(path, number)}: not a JSON object")
        out.append((_where(path, number), record))
    if not out:
        raise InputError(f"{path}: holds no records")
    return out


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: {field} must be text, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: {field} is empty")
    return value


def _id(record: dict[str, Any], where: str, fields: tuple[str, ...]) -> str:
    for field in fields:
        if field in record:
            value = record[field]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InputError(f"{where}: {field} must be a string or an integer")
            return str(value)
    raise InputError(f"{where}: no {' or '.join(fields)} field")


def _turn_text(turn: Any, where: str, field: str) -> str:
    if isinstance(turn, dict):
        return _text(turn.get("content"), where, f"{field}.content")
    return _text(turn, where, field)


def _unique(items: list[tuple[str, Any]], path: Path) -> None:
    seen: dict[str, str] = {}
    for where, item in items:
        key = item.id if isinstance(item, Question) else item
        if key in seen:
            raise InputError(f"{where}: id {key!r} repeats {seen[key]}")
        seen[key] = where


def read_questions(suite: str, path: str | Path) -> list[Question]:
    """Every question of ``path`` in file order; ``suite`` picks the layout."""
    path = Path(path)
    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
    items: list[tuple[str, Question]] = []
    if suite == "alpaca-eval":
        for where, r in _records(path, allow_list=True):
            text = _text(r.get("instruction"), where, "instruction")
            items.append(
                (where, Question(id=text, turns=(text,), category=str(r.get("dataset", ""))))
            )
        seen: dict[str, str] = {}
        for where, q in items:
            if q.id in seen:
                raise InputError(f"{where}: instruction repeats {seen[q.id]}")
            seen[q.id] = where
        return [q for _, q in items]
    for where, r in _records(path):
        qid = _id(r, where, ("question_id", "uid"))
        category = r.get("category", "")
        if not isinstance(category, str):
            raise InputError(f"{where}: category must be text")
        if suite == "arena-hard":
            if "prompt" in r:
                turns: tuple[str, ...] = (_text(r["prompt"], where, "prompt"),)
            else:
                raw = r.get("turns")
                if not isinstance(raw, list) or not raw:
                    raise InputError(f"{where}: no prompt or turns field (question {qid})")
                turns = (_turn_text(raw[0], where, "turns[0]"),)
            items.append((where, Question(qid, turns, category)))
            continue
        raw = r.get("turns")
        if not isinstance(raw, list) or not raw:
            raise InputError(
                f"{where}: turns must be a list of the user's messages (question {qid})"
            )
        turns = tuple(_turn_text(t, where, f"turns[{i}]") for i, t in enumerate(raw))
        reference = r.get("reference") or ()
        if not isinstance(reference, list | tuple):
            raise InputError(f"{where}: reference must be a list of texts (question {qid})")
        ref = tuple(_text(t, where, f"reference[{i}]") for i, t in enumerate(reference))
        items.append((where, Question(qid, turns, category.lower(), ref)))
    _unique(items, path)
    return [q for _, q in items]


def read_answers(suite: str, path: str | Path) -> dict[str, tuple[str, ...]]:
    """The answers in ``path`` by question id (alpaca-eval: by instruction text)."""
    path = Path(path)
    out: dict[str, tuple[str, ...]] = {}
    where_of: dict[str, str] = {}
    if suite == "alpaca-eval":
        for where, r in _records(path, allow_list=True):
            key = _text(r.get("instruction"), where, "instruction")
            value = (_text(r.get("output"), where, "output"),)
            if key in out:
                raise InputError(f"{where}: instruction repeats {where_of[key]}")
            out[key], where_of[key] = value, where
        return out
    for where, r in _records(path):
        qid = _id(r, where, ("question_id", "uid"))
        if "messages" in r:
            messages = r["messages"]
            if not isinstance(messages, list) or not messages:
                raise InputError(f"{where}: messages must be a non-empty list (question {qid})")
            last = messages[-1]
            content = last.get("content") if isinstance(last, dict) else None
            if isinstance(content, dict):
                content = content.get("answer")
            turns: tuple[str, ...] = (_text(content, where, "messages[-1].content"),)
        else:
            choices = r.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise InputError(f"{where}: no choices or messages field (question {qid})")
            raw = choices[0].get("turns")
            if not isinstance(raw, list) or not raw:
                raise InputError(f"{where}: choices[0].turns must be a non-empty list")
            turns = tuple(_turn_text(t, where, f"choices[0].turns[{i}]") for i, t in enumerate(raw))
        if qid in out:
            raise InputError(f"{where}: question {qid} repeats {where_of[qid]}")
        out[qid], where_of[qid] = turns, where
    return out


def alpaca_outputs(path: str | Path) -> dict[str, tuple[str, ...]]:
    """The ``output`` fields of an alpaca-eval questions file, when every record has one."""
    records = _records(Path(path), allow_list=True)
    if not all("output" in r for _, r in records):
        return {}
    return read_answers("alpaca-eval", path)


def match_answers(
    questions: list[Question], answers: dict[str, tuple[str, ...]], source: str, what: str
) -> None:
    """Refuse questions without an answer in ``answers`` (named, up to five of them)."""
    missing = [q.id for q in questions if q.id not in answers]
    if missing:
        shown = ", ".join(repr(m[:60]) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"{source}: no {what} for question {shown}{more}")
