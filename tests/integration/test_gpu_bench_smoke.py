"""benchmarks/gpu_bench.py's small case on CPU: the script a GPU machine will run works end to
end before one is lent (every comparison runs for real on the tiny model; nothing is judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_its_smoke_case_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("EVA_SPEC_YAML", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--smoke", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["judged"] is False
    g, t, i = figures["generate"], figures["train"], figures["idle"]
    assert g["backend"] == "transformers"
    assert g["eva_tokens_per_s"] > 0 and g["raw_tokens_per_s"] > 0 and g["ratio"] > 0
    assert t["eva_pairs_per_s"] > 0 and t["raw_pairs_per_s"] > 0
    assert 0 < i["busy_s"] < i["wall_s"] and 0 < i["idle_share"] < 1
    assert "generate  eva" in proc.stdout and "(cpu: not judged)" in proc.stdout
