"""Text generation behind one small interface, whatever runs the model.

eva samples several responses per prompt (to score and pair them) and rewrites prompts
(to evolve them). Both only need "n completions for each of these user messages", so every
backend (in-process transformers, offline vLLM, any OpenAI-compatible server) is reduced to
``Generator.generate``; the phases never see which one they got. Importing this module is
cheap: torch, transformers, openai and vllm load only when a backend is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from eva_runtime.seeds import derive_seed

from ..spec import GenerationBackend
from ._common import free_torch_memory, pick_device, render_prompt, torch_dtype
from .protocol import BackendError, Completion, Generator, ProgressCallback, Prompt, SamplingParams

__all__ = [
    "BACKENDS",
    "BackendError",
    "Completion",
    "Generator",
    "SamplingParams",
    "TransformersGenerator",
    "make_generator",
]

BACKENDS: tuple[str, ...] = tuple(b.value for b in GenerationBackend)


def make_generator(
    backend: str,
    model: str,
    *,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
) -> Generator:
    """Build the generator for ``backend``; ``model`` is a resolvable reference or server name.

    ``auto`` picks vLLM when it is installed and a GPU is present, transformers otherwise.
    For local backends ``model`` goes through ``resolve_model`` (a no-op for a resolved
    folder); for ``openai`` it is the name the server expects, passed on untouched.
    ``batch_size`` is prompts per ``generate`` call for transformers and requests in flight
    for openai; vLLM schedules by itself and ignores it.
    """
    backend = str(getattr(backend, "value", backend))
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; choose one of {BACKENDS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if backend == "auto":
        backend = _auto_backend()

    if backend == "openai":
        if not base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://host:8000/v1)")
        from .openai_generator import OpenAIGenerator

        return OpenAIGenerator(
            model, base_url=base_url, api_key=api_key, max_concurrency=batch_size
        )

    from ..models import resolve_model

    path = resolve_model(model, trust_remote_code=trust_remote_code)
    if backend == "vllm":
        from .vllm_generator import VLLMGenerator

        return VLLMGenerator(
            path, trust_remote_code=trust_remote_code, dtype=dtype, max_model_len=max_model_len
        )
    return TransformersGenerator(
        path,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        max_model_len=max_model_len,
    )


def _auto_backend() -> str:
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


class TransformersGenerator:
    """In-process generation with transformers: the backend that runs anywhere, CPU included.

    Prompts are left-padded so that every row's new tokens start at the same column, which
    is what batched decoder-only generation needs. ``batch_size`` counts prompts; each brings
    its ``n`` samples into the same ``generate`` call. Sampling is made reproducible by
    seeding torch's RNG per batch from ``params.seed`` and the batch index (inside a forked
    RNG, so the caller's random state is left alone); identical inputs and seed therefore give
    identical outputs on the same hardware.
    """

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        max_model_len: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model_path
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self._device = pick_device()
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"model {model_path}: tokenizer has neither a pad nor an eos token"
                )
            # Padding is masked out, so any token will do; eos is always in the vocabulary.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self._tokenizer = tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=torch_dtype(dtype, self._device),
            trust_remote_code=trust_remote_code,
            device_map=str(self._device) if self._device.type == "cuda" else None,
        )
        self._model: Any = model.eval()
        self._eos_ids = _eos_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)

    @property
    def padding_side(self) -> str:
        return str(self._tokenizer.padding_side)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        system: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        import torch

        if self._model is None:
            raise RuntimeError("generate() after close()")
        rendered = [render_prompt(self._tokenizer, p, system) for p in prompts]
        results: list[list[Completion]] = []
        for batch_index, start in enumerate(range(0, len(rendered), self.batch_size)):
            chunk = rendered[start : start + self.batch_size]
            texts = [text for text, _ in chunk]
            templated = chunk[0][1]  # the same tokenizer renders every prompt alike
            enc = self._tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not templated
            ).to(self._model.device)
            self._check_length(enc["attention_mask"], start, params.max_new_tokens)
            devices = [self._model.device] if self._model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(derive_seed(params.seed, batch_index))
                out = self._model.generate(**enc, generation_config=self._config(params))
            new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
            # Greedy decoding runs each prompt once: its n samples would be identical anyway.
            per_prompt = params.n if params.temperature > 0 else 1
            for i in range(len(texts)):
                rows = new_tokens[i * per_prompt : (i + 1) * per_prompt]
                completions = [self._completion(row) for row in rows]
                if per_prompt == 1:
                    completions = completions * params.n
                results.append(completions)
            if on_progress is not None:
                on_progress(len(texts))
        return results

    def _config(self, params: SamplingParams) -> Any:
        import copy

        config = copy.deepcopy(self._model.generation_config)
        common = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self._eos_ids,
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if params.temperature > 0:
            # top_k=0 disables transformers' implicit top-k of 50, so that temperature and
            # top_p mean the same thing here as on vLLM and OpenAI-compatible servers.
            config.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                num_return_sequences=params.n,
                **common,
            )
        else:
            config.update(
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                num_return_sequences=1,
                **common,
            )
        return config

    def _completion(self, token_ids: list[int]) -> Completion:
        end = next((k for k, t in enumerate(token_ids) if t in self._eos_ids), None)
        if end is None:
            content, finish, count = token_ids, "length", len(token_ids)
        else:
            content, finish, count = token_ids[:end], "stop", end + 1
        text = str(self._tokenizer.decode(content, skip_special_tokens=True))
        return Completion(text=text, finish_reason=finish, num_tokens=count)

    def _check_length(self, attention_mask: Any, start: int, max_new_tokens: int) -> None:
        if self.max_model_len is None:
            return
        budget = self.max_model_len - max_new_tokens
        for offset, length in enumerate(attention_mask.sum(dim=1).tolist()):
            if length > budget:
                raise ValueError(
                    f"prompt {start + offset} has {length} tokens; with max_new_tokens="
                    f"{max_new_tokens} it exceeds max_model_len={self.max_model_len}"
                )

    def close(self) -> None:
        if self._model is None:
            return
        self._model = None
        free_torch_memory()


def _eos_ids(config_eos: int | list[int] | None, tokenizer_eos: int | None) -> list[int]:
    """Every token that ends a turn: chat models often end on a token the config omits."""
    ids: set[int] = set()
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(int(i) for i in config_eos)
    if tokenizer_eos is not None:
        ids.add(int(tokenizer_eos))
    return sorted(ids)
