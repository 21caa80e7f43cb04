"""eva's generate and train steps against the raw libraries, and the idle share of a run (not
a test). Prepared to run on a GPU machine in one call, under ten minutes; on CPU it runs the
same comparisons with transformers and the tiny model, so it is known to work before a GPU is
ever lent (``--smoke`` is the small case ``make test`` runs).

Figures, each measured beside its baseline in the same process:
  generate   eva's generator (vLLM on a GPU, transformers on CPU) vs the raw library on the
             same rendered prompts and sampling: vLLM ``LLM.generate`` / transformers
             ``model.generate`` on left-padded batches. Tokens per second; target >= 95% of raw.
  train      eva's ``train_policy`` (DPO) vs a plain TRL ``DPOTrainer`` on the same pairs,
             config and models: pairs per second of the optimisation (``trainer.train()``);
             target >= 95% of raw.
  idle       one ``eva run`` iteration: the share of its wall time in which no step was
             generating, scoring, evolving or training (from the steps' timings); target < 5%.
Targets are judged on a GPU only; on CPU the figures are printed and not judged.

    .venv/bin/python benchmarks/gpu_bench.py [--model PATH] [--prompts 256] [--samples 4]
        [--max-new-tokens 256] [--pairs 256] [--smoke] [--json PATH]

Without --model a tiny random model is built (the tests' tiny Llama). On a GPU pass a real
policy folder (e.g. SmolLM2-135M-Instruct converted, or a hub model already on disk).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eva_runtime.backends.generation import SamplingParams, make_generator
from eva_runtime.solver.train import TrainSettings, train_policy
from eva_runtime.timing import StepClock, activate
from tiny_model import build_tiny_model
from tiny_run import tiny_manifest

TARGETS = {"generate": 0.95, "train": 0.95, "idle": 0.05}
TOPICS = ["rivers", "bread", "stars", "chess", "clouds", "trains", "bees", "maps"]


def _prompts(n: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n)]


def _render(tokenizer: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


# --------------------------------------------------------------------------- generate


def bench_generate(model: str, backend: str, prompts: list[str], params: SamplingParams) -> dict:
    gen = make_generator(backend, model, batch_size=len(prompts) if backend == "vllm" else 16)
    gen.generate(prompts[:2], params)  # warm-up: CUDA graphs, kernels, caches
    start = time.perf_counter()
    out = gen.generate(prompts, params)
    eva_s = time.perf_counter() - start
    eva_tokens = sum(c.num_tokens for row in out for c in row)
    gen.close()
    del gen
    gc.collect()
    raw_tokens, raw_s = (_raw_vllm if backend == "vllm" else _raw_transformers)(
        model, prompts, params
    )
    eva_rate, raw_rate = eva_tokens / eva_s, raw_tokens / raw_s
    return {
        "backend": backend,
        "eva_tokens_per_s": round(eva_rate, 1),
        "raw_tokens_per_s": round(raw_rate, 1),
        "ratio": round(eva_rate / raw_rate, 3),
    }


def _raw_vllm(model: str, prompts: list[str], params: SamplingParams) -> tuple[int, float]:
    from vllm import LLM
    from vllm import SamplingParams as VSampling

    llm = LLM(model=model, seed=params.seed, gpu_memory_utilization=0.85)
    tok = llm.get_tokenizer()
    texts = [_render(tok, p) for p in prompts]
    sampling = VSampling(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        seed=params.seed,
    )
    llm.generate(texts[:2], sampling, use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate(texts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    return sum(len(c.token_ids) for o in outs for c in o.outputs), seconds


def _raw_transformers(model: str, prompts: list[str], params: SamplingParams) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
    texts = [_render(tok, p) for p in prompts]
    kwargs = {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": 0,
        "max_new_tokens": params.max_new_tokens,
        "num_return_sequences": params.n,
        "pad_token_id": tok.pad_token_id,
    }
    tokens, seconds = 0, 0.0
    for start_i in range(0, len(texts), 16):
        enc = tok(texts[start_i : start_i + 16], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(device)  # fmt: skip
        start = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(**enc, **kwargs)
        seconds += time.perf_counter() - start
        new = out[:, enc["input_ids"].shape[1] :]
        stop = {tok.pad_token_id, tok.eos_token_id}
        tokens += sum(next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
                      for row in new.tolist())  # fmt: skip
    return tokens, seconds


# --------------------------------------------------------------------------- train


def _pairs(n: int) -> list[dict[str, str]]:
    return [
        {
            "prompt": p,
            "chosen": f"A short, clear answer about {TOPICS[i % len(TOPICS)]}.",
            "rejected": "The quick brown fox jumps over the lazy dog 0123456789.",
        }
        for i, p in enumerate(_prompts(n))
    ]


def bench_train(model: str, pairs: list[dict[str, str]], work: Path) -> dict:
    settings = TrainSettings(
        learning_rate=1e-6, epochs=1.0, per_device_batch_size=8, warmup_ratio=0.0,
        beta=0.1, max_length=256,
    )  # fmt: skip
    clock = StepClock()
    with activate(clock):
        train_policy(pairs, model_path=model, output_dir=str(work / "eva"), settings=settings)
    eva_s = clock.seconds["train"]
    raw_s = _raw_trl(model, pairs, settings, work / "raw")
    eva_rate, raw_rate = len(pairs) / eva_s, len(pairs) / raw_s
    return {
        "eva_pairs_per_s": round(eva_rate, 2),
        "raw_pairs_per_s": round(raw_rate, 2),
        "ratio": round(eva_rate / raw_rate, 3),
    }


def _raw_trl(model: str, pairs: list[dict[str, str]], s: TrainSettings, out: Path) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    on_gpu = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if on_gpu else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )
    args = DPOConfig(
        output_dir=str(out), num_train_epochs=s.epochs, per_device_train_batch_size=8,
        learning_rate=s.learning_rate, lr_scheduler_type=s.lr_scheduler, warmup_steps=0.0,
        beta=s.beta, max_length=s.max_length, bf16=on_gpu, use_cpu=not on_gpu,
        save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        gradient_checkpointing=False, loss_type=["sigmoid"],
    )  # fmt: skip
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- idle


def bench_idle(model: Path, backend: str, work: Path) -> dict:
    from eva_runtime.runner import run_all
    from eva_runtime.spec import load_run

    work.mkdir(parents=True, exist_ok=True)
    manifest = tiny_manifest(
        work, model, name="idle", prompts=24, spec={"generation": {"backend": backend}}
    )
    start = time.perf_counter()
    result = run_all(load_run(manifest), work / "runs", tracking=False)
    wall = time.perf_counter() - start
    busy = 0.0
    for marker in Path(result.run_dir).rglob("_SUCCESS.json"):
        if "shard-" in str(marker.parent):
            continue  # a sharded step's own marker adds up its shards
        phases = json.loads(marker.read_text()).get("timings", {}).get("phases") or {}
        busy += sum(phases.get(p, 0.0) for p in ("generate", "score", "evolve", "train"))
    return {
        "wall_s": round(wall, 2),
        "busy_s": round(busy, 2),
        "idle_share": round(1 - busy / wall, 3),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default=None, help="Policy folder (default: a tiny random model).")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="A few seconds on CPU (make test).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.prompts, args.samples, args.max_new_tokens, args.pairs = 8, 2, 8, 16
    on_gpu = torch.cuda.is_available()
    backend = "vllm" if on_gpu and _has_vllm() else "transformers"
    with tempfile.TemporaryDirectory(prefix="eva-gpu-bench-") as tmp:
        work = Path(tmp)
        model = Path(args.model) if args.model else build_tiny_model(work / "policy")
        params = SamplingParams(
            n=args.samples, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=1
        )
        figures: dict[str, Any] = {"device": torch.cuda.get_device_name() if on_gpu else "cpu"}
        figures["generate"] = bench_generate(str(model), backend, _prompts(args.prompts), params)
        figures["train"] = bench_train(str(model), _pairs(args.pairs), work / "train")
        figures["idle"] = bench_idle(model, backend, work / "idle")
    judged = on_gpu and not args.smoke
    checks = {
        "generate": figures["generate"]["ratio"] >= TARGETS["generate"],
        "train": figures["train"]["ratio"] >= TARGETS["train"],
        "idle": figures["idle"]["idle_share"] < TARGETS["idle"],
    }
    figures["judged"] = judged
    figures["passed"] = checks if judged else None
    g, t, i = figures["generate"], figures["train"], figures["idle"]
    verdict = (lambda ok: "PASS" if ok else "FAIL") if judged else (lambda ok: "(cpu: not judged)")
    print(f"device: {figures['device']}, generation backend: {backend}")
    print(
        f"generate  eva {g['eva_tokens_per_s']} tok/s vs raw {g['raw_tokens_per_s']} tok/s: "
        f"{g['ratio']:.3f} (target >= {TARGETS['generate']}) {verdict(checks['generate'])}"
    )
    print(
        f"train     eva {t['eva_pairs_per_s']} pairs/s vs raw {t['raw_pairs_per_s']} pairs/s: "
        f"{t['ratio']:.3f} (target >= {TARGETS['train']}) {verdict(checks['train'])}"
    )
    print(
        f"idle      {i['idle_share']:.3f} of {i['wall_s']} s without generation, scoring, "
        f"evolving or training (target < {TARGETS['idle']}) {verdict(checks['idle'])}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if judged and not all(checks.values()) else 0


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


if __name__ == "__main__":
    sys.exit(main())
