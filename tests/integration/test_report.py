"""The HTML run report, on real run directories made by the local runner with a tiny model.

The report is opened by people in a browser, so the checks go beyond "a file was written":
the HTML is parsed, every inline PNG is decoded and must hold a drawn figure, untrusted
prompt text must reach the page as text and never as markup, and a real headless Chromium
renders the page to a screenshot that must not be blank.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eva_runtime.report import write_compare, write_report
from eva_runtime.runner import run_all
from eva_runtime.spec import load_run
from tiny_run import tiny_manifest as shared_manifest

pytestmark = pytest.mark.timeout(300)

SCRIPT = "<script>alert(1)</script>"
SECTIONS = ("summary", "reward", "heldout", "informativeness", "lineage", "evolutions", "loss")
CREATOR_SECTIONS = ("informativeness", "lineage", "evolutions")
COMPARE_SECTIONS = ("summary", "heldout", "reward", "loss")
CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_manifest(
    tmp: Path, model: Path, *, creator: bool = True, name: str = "tiny", iterations: int = 2
) -> Path:
    """Every prompt carries a script tag: whichever prompts the report shows, it must escape."""
    return shared_manifest(
        tmp,
        model,
        creator=creator,
        name=name,
        prompts=10,
        prompt_suffix=f" & more. {SCRIPT}",
        spec={
            "iterations": iterations,
            "prompts": {"heldOut": 2},
            "generation": {"maxNewTokens": 10},
            "creator": {"evolve": {"variantsPerPrompt": 2, "evolver": {"maxNewTokens": 20}}},
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """A 2-iteration eva run and a 1-iteration baseline, made once for every test here.

    The baseline is shorter to keep the file fast, and so that the comparison is also
    checked on runs of different lengths."""
    tmp = tmp_path_factory.mktemp("report-runs")
    out = {}
    for name, creator, iterations in (("eva", True, 2), ("baseline", False, 1)):
        t0 = time.time()
        manifest = tiny_manifest(tmp, tiny_model, creator=creator, name=name, iterations=iterations)
        out[name] = run_all(load_run(manifest), tmp / "runs").run_dir
        print(f"{name} run ({iterations} iterations): {time.time() - t0:.1f}s")
    return out


class Page(HTMLParser):
    """The parts of a report the tests look at: ids, images, tags, text per section."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.imgs: list[dict[str, str | None]] = []
        self.section_text: dict[str, str] = {}
        self.section_imgs: dict[str, int] = {}
        self._section: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids[a["id"]] = tag
        if tag == "section":
            self._section = a.get("id")
            self.section_text.setdefault(self._section or "", "")
        if tag == "img":
            self.imgs.append(a)
            if self._section:
                self.section_imgs[self._section] = self.section_imgs.get(self._section, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section:
            self.section_text[self._section] += data


def check_png(uri: str | None) -> tuple[int, int]:
    """A data URI holding a real, non-blank PNG figure; returns its size in pixels."""
    from matplotlib.image import imread

    assert uri and uri.startswith("data:image/png;base64,"), (uri or "")[:60]
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200, (width, height)
    assert len(data) > 5000, f"{len(data)} bytes: too small to hold a drawn figure"
    pixels = imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.02, "the image is blank"
    return width, height


def check_self_contained(page: Page, text: str) -> None:
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for key in ("src", "href", "srcset", "data"):
            value = (attrs.get(key) or "").strip().lower()
            if value:
                assert value.startswith("data:image/png;base64,") or value.startswith("#"), (
                    tag,
                    key,
                    value[:60],
                )
    lowered = text.lower()
    assert "<script" not in lowered
    assert "url(" not in lowered and "@import" not in lowered


def test_report_of_an_eva_run(runs: dict[str, Path]) -> None:
    run_dir = runs["eva"]
    t0 = time.time()
    out = write_report(run_dir)
    elapsed = time.time() - t0
    assert out.resolve() == (run_dir / "report.html").resolve()
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    for sid in SECTIONS:
        assert page.ids.get(sid) == "section", f"section {sid!r} missing"
    assert page.ids.get("header") == "header" and page.ids.get("status")
    header = text[: text.index('id="summary"')]
    assert "eva run report: eva<" in header  # the run's name
    assert "default" in header  # namespace
    assert "dpo" in header and "importanceWeighted" in header  # spec highlights
    assert "Complete" in header

    # Every figure is an inline PNG with something drawn on it; every figure section has one.
    assert len(page.imgs) >= 9
    for img in page.imgs:
        check_png(img.get("src"))
        assert img.get("alt")
    for sid in SECTIONS:
        if sid not in ("summary", "evolutions"):  # those two are tables
            assert page.section_imgs.get(sid, 0) >= 1, sid
    assert page.section_imgs.get("informativeness") == 2  # one histogram per iteration
    check_self_contained(page, text)

    # The example evolutions show a real parent from evolved.parquet with its children.
    evolved = pd.read_parquet(run_dir / "iter-0" / "create" / "evolved.parquet")
    seeds = pd.read_parquet(run_dir / "prepare" / "train.parquet").set_index("prompt_id")
    top = evolved.sort_values("parent_informativeness", ascending=False, kind="stable")
    parent = seeds.loc[top["parent_id"].iloc[0], "prompt"]
    assert html.escape(parent) in text
    assert parent in page.section_text["evolutions"]
    kids = evolved[evolved["parent_id"] == top["parent_id"].iloc[0]]
    for method in set(kids["method"]):
        assert f'<span class="tag">{html.escape(method)}</span>' in text, method
    assert "creator disabled" not in text

    summary = page.section_text["summary"]
    assert "base" in summary and "iter 1" in summary
    print(f"eva report: {len(text) / 1e3:.0f} kB, {len(page.imgs)} figures, {elapsed:.1f}s")


def test_prompt_text_is_escaped_never_markup(runs: dict[str, Path], tmp_path: Path) -> None:
    text = write_report(runs["eva"], tmp_path / "r.html").read_text(encoding="utf-8")
    assert SCRIPT not in text
    assert html.escape(SCRIPT) in text
    assert "&amp; more." in text
    page = Page(text)
    assert not [t for t, _ in page.tags if t == "script"]
    shown = sum(page.section_text[s].count(SCRIPT) for s in ("evolutions", "lineage"))
    assert shown >= 3  # the prompts are on the page, as text


def test_baseline_report_says_the_creator_is_disabled(runs: dict[str, Path]) -> None:
    text = write_report(runs["baseline"]).read_text(encoding="utf-8")
    page = Page(text)
    for sid in SECTIONS:
        assert page.ids.get(sid) == "section", sid
    for sid in CREATOR_SECTIONS:
        assert "creator disabled (baseline)" in page.section_text[sid], sid
        assert page.section_imgs.get(sid, 0) == 0
    for sid in ("reward", "heldout", "loss"):
        assert page.section_imgs.get(sid, 0) >= 1, sid
    for img in page.imgs:
        check_png(img.get("src"))
    check_self_contained(page, text)


def test_unfinished_run_renders_and_names_what_is_missing(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "default" / "eva"
    shutil.copytree(runs["eva"], run_dir, ignore=shutil.ignore_patterns("report.html"))
    # Killed during iteration 1: generate-evolved started but never finished, nothing after.
    shutil.rmtree(run_dir / "iter-1" / "train")
    shutil.rmtree(run_dir / "iter-1" / "evaluate")
    (run_dir / "iter-1" / "generate-evolved" / "_SUCCESS.json").unlink()
    text = write_report(run_dir).read_text(encoding="utf-8")
    page = Page(text)
    for sid in SECTIONS:
        assert page.ids.get(sid) == "section", sid
    status = text[text.index('id="status"') : text.index('id="summary"')]
    assert "Incomplete" in status
    for name in (
        "iter-1/generate-evolved (started, not complete)",
        "iter-1/train",
        "iter-1/evaluate",
    ):
        assert name in status, name
    assert "iter-0/" not in status
    assert "iter-1/train" in page.section_text["loss"]
    assert "iter-1/evaluate" in page.section_text["heldout"]
    # What exists is still drawn: iteration 0's evaluation and both create steps.
    assert page.section_imgs.get("heldout", 0) >= 1
    assert page.section_imgs.get("informativeness") == 2
    for img in page.imgs:
        check_png(img.get("src"))

    # Nothing but the manifest: every section says what it waits for, no figure at all.
    bare = tmp_path / "default" / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "evarun.yaml", bare / "evarun.yaml")
    text = write_report(bare).read_text(encoding="utf-8")
    page = Page(text)
    assert not page.imgs
    for sid in SECTIONS:
        assert "missing" in page.section_text[sid].lower() or "not" in page.section_text[sid]
    assert "prepare" in text and "iter-0 (not started)" in text


def test_compare_puts_both_runs_on_the_same_axes(runs: dict[str, Path], tmp_path: Path) -> None:
    labels = ("eva <self-play>", "baseline & DPO")
    out = write_compare(runs["eva"], runs["baseline"], tmp_path / "cmp" / "c.html", labels=labels)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    for sid in COMPARE_SECTIONS:
        assert page.ids.get(sid) == "section", sid
        assert sid == "summary" or page.section_imgs.get(sid, 0) >= 1, sid
    for label in labels:
        assert html.escape(label) in text
        assert label in page.section_text["summary"]
    assert "<self-play>" not in text
    assert len(page.imgs) >= 5
    for img in page.imgs:
        check_png(img.get("src"))
    check_self_contained(page, text)
    # The spec difference that makes one of them the baseline is named.
    assert "creator.enabled" in page.section_text["spec"]
    # Held-out rewards of both runs (of different lengths) are in the side-by-side table.
    for run_dir, last in ((runs["eva"], 1), (runs["baseline"], 0)):
        marker = run_dir / f"iter-{last}" / "evaluate" / "_SUCCESS.json"
        reward = json.loads(marker.read_text())["counts"]["reward_new"]
        assert f"{reward:.4f}" in page.section_text["summary"]

    default = Page(write_compare(runs["eva"], runs["baseline"], tmp_path / "d.html").read_text())
    assert "default/eva" in default.section_text["summary"]
    assert "default/baseline" in default.section_text["summary"]


def test_importing_the_report_loads_neither_matplotlib_nor_torch() -> None:
    code = (
        "import sys, eva_runtime.report; "
        "print([m for m in ('matplotlib', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_renders_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    from matplotlib.image import imread

    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` must install the Debian package chromium "
            "(apt-get install -y chromium) before the tests run"
        )
    report = write_report(runs["eva"], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    t0 = time.time()
    proc = subprocess.run(
        [str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists(), proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(shot, format="png")
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05, "the screenshot is blank"
    rgb = (pixels[..., :3].reshape(-1, 3) * 255).round().astype(np.uint32)
    colours, counts = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2], return_counts=True)
    assert len(colours) > 50
    assert counts.max() / len(rgb) < 0.9, "one colour fills the screenshot"

    # The browser's own parser built no script element from the page.
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="evolutions"' in dom.stdout
    assert "<script" not in dom.stdout.lower()
    assert html.escape(SCRIPT, quote=False) in dom.stdout
    print(f"chromium screenshot: {elapsed:.1f}s")
