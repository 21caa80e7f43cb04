"""Training in several processes under ``accelerate launch``: the job handed to the
workers, the launch configuration, and their output streamed back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eva_runtime.solver.data import _conversational
from eva_runtime.solver.settings import TrainResult, TrainSettings, settings_to_dict
from eva_runtime.solver.trainer import _resolve_precision

logger = logging.getLogger(__name__)

# Prefix of the stdout lines through which launched workers stream their log records
# back to the parent; everything else on stdout is ordinary output.
LOG_MARKER = "EVA_TRAIN_LOG "
_STDERR_TAIL_LINES = 60


def _train_launched(
    records: Sequence[Mapping[str, str]],
    *,
    model_path: str,
    output_dir: str,
    settings: TrainSettings,
    on_log: Callable[[dict], None] | None,
) -> TrainResult:
    """Run training in ``settings.num_processes`` workers under ``accelerate launch``."""
    import torch

    on_gpu = torch.cuda.is_available()
    precision = _resolve_precision(settings.precision)
    if settings.deepspeed == "zero3" and not on_gpu:
        raise ValueError("deepspeed='zero3' needs CUDA GPUs; none is visible")
    visible = torch.cuda.device_count()
    if settings.num_processes > 1 and on_gpu and visible < settings.num_processes:
        raise ValueError(f"num_processes={settings.num_processes} but {visible} GPUs are visible")
    worker_settings = dataclasses.replace(settings, precision=precision)

    with tempfile.TemporaryDirectory(prefix="eva-train-job-") as job_root:
        job = Path(job_root)
        pairs_file = job / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(dict(r)) + "\n" for r in records))
        result_file = job / "result.json"
        job_file = job / "job.json"
        spec: dict[str, Any] = {
            "model_path": str(model_path),
            "output_dir": str(Path(output_dir).resolve()),
            "settings": settings_to_dict(worker_settings),
            "pairs_file": str(pairs_file),
            "result_file": str(result_file),
        }
        if settings.algorithm == "sppo":
            # TRL caches the precomputed reference log-probabilities in a file beside the
            # dataset's, which every rank then reads: an in-memory dataset would put it in
            # each process's own temporary folder. A dataset saved here is one folder for all.
            from datasets import Dataset

            dataset_dir = job / "dataset"
            Dataset.from_list([_conversational(r) for r in records]).save_to_disk(dataset_dir)
            spec["dataset_dir"] = str(dataset_dir)
        job_file.write_text(json.dumps(spec))
        config_file = job / "accelerate_config.json"
        config_file.write_text(json.dumps(_accelerate_config(worker_settings, precision)))
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config_file),
            "--num_processes",
            str(settings.num_processes),
            "--num_machines",
            "1",
            "--main_process_port",
            "0",
            "--mixed_precision",
            _accelerate_precision(precision),
            "--module",
            "eva_runtime.solver.train_worker",
            str(job_file),
        ]
        _run_streaming(command, _launch_env(settings.num_processes, on_gpu), on_log)
        if not result_file.exists():
            raise RuntimeError("training workers exited cleanly but wrote no result file")
        return TrainResult(**json.loads(result_file.read_text()))


def _accelerate_precision(precision: str) -> str:
    return {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")


def _accelerate_config(settings: TrainSettings, precision: str) -> dict[str, Any]:
    """A launch config of our own, so a user's default accelerate config cannot leak in.

    Plain data parallelism is declared as MULTI_GPU even on CPU: that selects accelerate's
    torchrun launcher, which actually starts N processes (its CPU launcher starts one
    unless driven by mpirun). The workers then ask for the CPU (``use_cpu``), which makes
    accelerate form a gloo process group.
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": _accelerate_precision(precision),
        "num_machines": 1,
        "num_processes": settings.num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if settings.deepspeed == "zero3":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_multinode_launcher": "standard",
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": True,
            # Without it, saving under ZeRO-3 writes empty shards instead of the weights.
            "zero3_save_16bit_model": True,
            "zero_stage": 3,
        }
    return config


def _launch_env(num_processes: int, on_gpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not on_gpu and "OMP_NUM_THREADS" not in env:
        # N processes each spawning a thread per core oversubscribe the CPU badly.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def _run_streaming(
    command: list[str], env: dict[str, str], on_log: Callable[[dict], None] | None
) -> None:
    """Run the launcher, relaying worker log records live; raise with its stderr tail."""
    logger.info("launching: %s", " ".join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
        # Own process group, so a failure here can stop the launcher and all its workers.
        start_new_session=True,
    )
    stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
    reader = threading.Thread(
        target=_drain, args=(process.stderr, stderr_tail), name="eva-train-stderr", daemon=True
    )
    reader.start()
    try:
        assert process.stdout is not None
        for line in _lines(process.stdout):
            if line.startswith(LOG_MARKER):
                record = json.loads(line[len(LOG_MARKER) :])
                if on_log is not None:
                    on_log(record)
            else:
                logger.info("[train] %s", line)
        returncode = process.wait()
    except BaseException:
        _stop_group(process)
        raise
    finally:
        reader.join(timeout=10)
    if returncode != 0:
        tail = "\n".join(stderr_tail)
        raise RuntimeError(f"distributed training failed with exit code {returncode}:\n{tail}")


def _lines(stream: Any) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")


def _drain(stream: Any, tail: deque[str]) -> None:
    for line in _lines(stream):
        tail.append(line)
        logger.info("[train] %s", line)


def _stop_group(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
