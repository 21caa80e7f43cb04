"""A real run watched by a real Prometheus and Pushgateway (Debian packages)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prom_tools import (
    free_port,
    launch_prometheus,
    launch_pushgateway,
    pushgateway_groups,
    query,
    series,
    wait_scraping,
)
from tiny_run import tiny_manifest

pytestmark = pytest.mark.timeout(300)


def test_prometheus_sees_a_running_step_and_the_gateway_forgets_the_run(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = tiny_manifest(
        tmp_path,
        tiny_model,
        creator=False,
        name="watched",
        reward="paused_reward:length_after_pause",
    )
    port = free_port()
    with launch_pushgateway(tmp_path) as gateway:
        targets = {
            "eva-step": (f"127.0.0.1:{port}", False),
            "pushgateway": (gateway.url.removeprefix("http://"), True),
        }
        with launch_prometheus(tmp_path, targets) as prometheus:
            wait_scraping(prometheus, set(targets))
            env = {
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(Path(__file__).parent),
                "EVA_TEST_REWARD_PAUSE": "2.5",  # keeps each scoring step alive for scrapes
                "EVA_METRICS_PORT": str(port),  # the port as a pod gets it: from the environment
            }
            cmd = [sys.executable, "-m", "eva_runtime.cli", "run", str(manifest)]
            cmd += ["--workdir", str(tmp_path / "runs"), "--no-tracking"]
            cmd += ["--pushgateway", gateway.url]
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
            live = None
            deadline = time.time() + 240
            while proc.poll() is None and time.time() < deadline:
                # A working step (prepare's series exist too, at 0, while it reads the prompts).
                got = query(
                    prometheus,
                    'eva_prompts_done_total{job="eva-step",run="watched",step=~"generate|evaluate"}',
                )
                if got and live is None:
                    live = got
                time.sleep(0.5)
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            # Scraped from the step's own /metrics while it worked.
            assert live, "Prometheus never scraped a step of the run while it ran"
            labels = live[0]["metric"]
            assert labels["namespace"] == "default" and labels["step"] in ("generate", "evaluate")
            assert not any("prompt_id" in k for k in labels)
            done = query(
                prometheus,
                'max_over_time(eva_prompts_done_total{job="eva-step",run="watched",'
                'step="generate"}[5m])',
            )
            assert done and float(done[0]["value"][1]) == 12.0  # the tiny run's 12 prompts
            # Pushed at each step's end (scraped through the gateway), then deleted at run end.
            # The last step's group lives too briefly for a 1 s scrape to be sure to see it.
            pushed = series(prometheus, 'eva_step_status{job="eva",run="watched"}')
            assert {s["step"] for s in pushed} >= {"prepare", "generate", "train"}
            # Where each step's time went, pushed with it: training's time is mostly training.
            parts = series(prometheus, 'eva_step_phase_seconds{job="eva",run="watched"}')
            assert {s["phase"] for s in parts} >= {"load", "generate", "score", "train", "other"}
            trained = query(  # over a window: the run's groups left the gateway at its end
                prometheus,
                'max_over_time(eva_step_phase_seconds{job="eva",run="watched",step="train",'
                'phase="train"}[5m])',
            )
            assert trained and float(trained[0]["value"][1]) > 0
            left = [g for g in pushgateway_groups(gateway) if g["labels"].get("run") == "watched"]
            assert left == []
