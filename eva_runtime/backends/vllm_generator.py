"""Offline generation with vLLM, the fast path on a GPU.

vLLM batches and schedules by itself, so prompts are handed over in large chunks; chunking
only exists to report progress. Each prompt gets its own seed derived from ``params.seed``
and its index, so results do not depend on how vLLM happens to schedule requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from eva_runtime.seeds import derive_seed

from ._common import chat_messages, free_torch_memory
from .protocol import Completion, ProgressCallback, Prompt, SamplingParams

__all__ = ["VLLMGenerator"]

_CHUNK = 256  # prompts per llm.chat call: large enough to keep vLLM's batches full


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "the vllm generation backend needs vLLM, which is not installed here. Install the "
            "gpu extra on a machine with a CUDA GPU (pip install 'eva-platform[gpu]'), or use "
            "backend 'transformers' or 'openai'."
        ) from exc
    return vllm


class VLLMGenerator:
    def __init__(
        self,
        model_path: str,
        *,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
    ) -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        kwargs: dict[str, Any] = {
            "model": model_path,
            "trust_remote_code": trust_remote_code,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self._llm: Any = vllm.LLM(**kwargs)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        system: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        if self._llm is None:
            raise RuntimeError("generate() after close()")
        greedy = params.temperature == 0
        # vLLM refuses n > 1 with greedy decoding, whose n samples would be identical anyway:
        # one is decoded and repeated.
        per_prompt = 1 if greedy else params.n
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), _CHUNK):
            chunk = prompts[start : start + _CHUNK]
            conversations = [chat_messages(p, system) for p in chunk]
            sampling = [
                self._vllm.SamplingParams(
                    n=per_prompt,
                    temperature=params.temperature,
                    top_p=1.0 if greedy else params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=derive_seed(params.seed, start + k),
                )
                for k in range(len(chunk))
            ]
            outputs = self._llm.chat(conversations, sampling_params=sampling, use_tqdm=False)
            for output in outputs:
                completions = [
                    Completion(
                        text=o.text,
                        finish_reason="length" if o.finish_reason == "length" else "stop",
                        num_tokens=len(o.token_ids),
                    )
                    for o in output.outputs
                ]
                results.append(completions * params.n if greedy else completions)
            if on_progress is not None:
                on_progress(len(chunk))
        return results

    def close(self) -> None:
        if self._llm is None:
            return
        self._llm = None
        # Best effort: vLLM keeps distributed state that a plain ``del`` leaves behind, and
        # its location moves between releases; a failure here must not mask the run's result.
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        free_torch_memory()
