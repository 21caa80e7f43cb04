"""Bad prompt files give one clear error naming file and line, or a documented skip."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eva_runtime.errors import InputError
from eva_runtime.prompts import load_prompts


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_ids_are_stable_and_derived_from_text(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "a b"}', '{"prompt": "c d"}'])
    t1, t2 = load_prompts(f), load_prompts(f)
    assert t1.ids == t2.ids and len(set(t1.ids)) == 2 and t1.prompts == ["a b", "c d"]


def test_malformed_json_line_is_named(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "p.jsonl", ['{"prompt": "ok"}', '{"prompt": "broken"', '{"prompt": "x"}']
    )
    with pytest.raises(InputError, match=r"p\.jsonl:2: not valid JSON"):
        load_prompts(f)


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"p\.jsonl:2: not UTF-8"):
        load_prompts(str(f))


def test_empty_prompts_are_skipped_and_counted(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "p.jsonl",
        ['{"prompt": "a"}', '{"prompt": "   "}', '{"prompt": ""}', '{"prompt": "b"}'],
    )
    t = load_prompts(f)
    assert t.prompts == ["a", "b"] and t.skipped == {"empty": 2} and t.rows_read == 4


def test_repeated_texts_without_ids_are_skipped_and_counted(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"prompt": " a "}', '{"prompt": "b"}']
    )
    t = load_prompts(f)
    assert t.prompts == ["a", "b"] and t.skipped == {"duplicate_text": 1}


def test_missing_prompt_column_names_what_was_found(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", ['{"question": "a", "id": 1}'])
    with pytest.raises(InputError, match=r"no 'prompt' field in any line \(found: id, question\)"):
        load_prompts(f)
    pq = tmp_path / "p.parquet"
    pd.DataFrame({"text": ["a"]}).to_parquet(pq)
    with pytest.raises(InputError, match=r"p\.parquet: no 'prompt' column \(found: text\)"):
        load_prompts(str(pq))


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    rows = [json.dumps({"id": i, "prompt": f"q{n}"}) for n, i in enumerate(["a", "b", "a"])]
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(InputError, match=r"p\.jsonl:3: duplicate id 'a' \(first at line 1\)"):
        load_prompts(f, id_column="id")


def test_non_text_prompt_is_named(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "a"}', '{"prompt": 42}'])
    with pytest.raises(InputError, match=r"p\.jsonl:2: 'prompt' must be text, got int"):
        load_prompts(f)


def test_parquet_csv_and_json_sources(tmp_path: Path) -> None:
    pq = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(pq)
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na\nb\n")
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    for f in (pq, csv, js):
        assert load_prompts(str(f)).prompts == ["a", "b"]


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="unknown prompt file type"):
        load_prompts(str(tmp_path / "p.txt"))


def test_limit_keeps_the_first_prompts(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": f"q{i}"}) for i in range(10)])
    assert load_prompts(f, limit=3).prompts == ["q0", "q1", "q2"]
