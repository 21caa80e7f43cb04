"""Generation through any OpenAI-compatible server (vLLM, TGI, ``transformers serve``, APIs).

Servers differ in what they honour. Some ignore ``n`` and answer with one choice
(``transformers serve`` does), some reject it; both are detected on the first prompt and the
remaining samples are then requested one by one, each with its own derived seed so that
servers which honour seeds still return distinct samples. Retries with exponential backoff
for connection errors, 408/409/429 and 5xx are left to the ``openai`` client, which already
implements them; what reaches the caller after that is a ``BackendError`` naming the server.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from eva_runtime.seeds import derive_seed

from ._common import chat_messages
from .protocol import BackendError, Completion, ProgressCallback, Prompt, SamplingParams

__all__ = ["OpenAIGenerator"]


class OpenAIGenerator:
    """Chat completions against ``base_url`` with at most ``max_concurrency`` requests in flight.

    ``n_supported`` is None until the server has been asked for n > 1 samples once, then
    tells whether it returned them in one response.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 600.0,
    ) -> None:
        import openai

        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.n_supported: bool | None = None
        self._lock = threading.Lock()
        # Local servers need no key, but the client insists on one.
        self._client: Any = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", max_retries=max_retries, timeout=timeout
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        system: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[list[Completion]]:
        if self._client is None:
            raise RuntimeError("generate() after close()")
        results: list[list[Completion] | None] = [None] * len(prompts)
        if not prompts:
            return []
        # The first prompt goes alone: it finds out whether the server honours n, so the
        # others do not all waste a request on it.
        results[0] = self._samples(0, prompts[0], params, system)
        if on_progress is not None:
            on_progress(1)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {
                pool.submit(self._samples, i, prompts[i], params, system): i
                for i in range(1, len(prompts))
            }
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    if on_progress is not None:
                        on_progress(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [r for r in results if r is not None]

    def _samples(
        self, index: int, prompt: Prompt, params: SamplingParams, system: str | None
    ) -> list[Completion]:
        messages = chat_messages(prompt, system)
        if params.temperature == 0:
            # Greedy: the n samples are one reply. Asked once (some servers, vLLM's among
            # them, refuse n > 1 with temperature 0, which says nothing of sampled requests).
            return self._request(messages, params, 1, derive_seed(params.seed, index)) * params.n
        completions: list[Completion] = []
        if params.n > 1 and self.n_supported is not False:
            try:
                completions = self._request(
                    messages, params, params.n, derive_seed(params.seed, index)
                )
            except BackendError as exc:
                if exc.__cause__ is None or not _is_client_error(exc.__cause__):
                    raise
                # The server refused n > 1: fall back to one sample per request below.
            with self._lock:
                if self.n_supported is None or len(completions) < params.n:
                    self.n_supported = len(completions) >= params.n
            completions = completions[: params.n]
        for j in range(len(completions), params.n):
            seed = derive_seed(params.seed, index) if j == 0 else derive_seed(params.seed, index, j)
            completions.extend(self._request(messages, params, 1, seed))
        return completions

    def _request(
        self, messages: list[dict[str, str]], params: SamplingParams, n: int, seed: int
    ) -> list[Completion]:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
        }
        if n > 1:
            kwargs["n"] = n
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} (gave up after "
                f"{self.max_retries} retries): {exc}. Is it running, and is the URL right "
                "(it usually ends in /v1)?"
            ) from exc
        except openai.APIStatusError as exc:
            raise BackendError(
                f"the OpenAI-compatible server at {self.base_url} answered HTTP "
                f"{exc.status_code} for model {self.model!r}: {_error_text(exc)}"
            ) from exc
        choices = sorted(response.choices or [], key=lambda c: c.index or 0)
        if not choices:
            raise BackendError(f"the server at {self.base_url} returned no choices")
        usage = getattr(response, "usage", None)
        total = getattr(usage, "completion_tokens", None)
        return _to_completions(choices, total, params.max_new_tokens)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _to_completions(
    choices: list[Any], total_tokens: int | None, max_tokens: int
) -> list[Completion]:
    """Map choices to completions; token counts are per choice only when the server says so.

    ``usage`` covers all choices together. A choice cut at the limit used exactly
    ``max_tokens``; the rest of the total is split evenly among the others (exact for n=1).
    """
    finishes = ["length" if c.finish_reason == "length" else "stop" for c in choices]
    cut = finishes.count("length")
    others = len(choices) - cut
    share = 0
    if total_tokens is not None and others:
        share = max(0, int(total_tokens) - cut * max_tokens) // others
    return [
        Completion(
            text=(choice.message.content or "") if choice.message is not None else "",
            finish_reason=finish,
            num_tokens=max_tokens if finish == "length" else share,
        )
        for choice, finish in zip(choices, finishes, strict=True)
    ]


def _is_client_error(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status in (400, 422)


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error")
        if detail:
            return str(detail)
    return str(getattr(exc, "message", exc))
