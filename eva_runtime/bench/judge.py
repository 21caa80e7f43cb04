"""Judges and the judgment store: every ask is kept, so nothing is asked twice.

A judge is an OpenAI-compatible endpoint (requests in flight bounded by ``concurrency``;
429, 5xx, connection errors and timeouts retried with exponential back-off by the ``openai``
client, ``max_retries`` times, each request bounded by ``timeout``) or a local model through
the generation backends. Every reply, parsed or not, is appended to ``judgments.jsonl`` as it
arrives (prompt, raw reply, parsed verdict, judge id, attempt), so a killed benchmark resumes
by asking only for what is missing and running it again costs nothing.

A reply without a verdict is asked again (``parse_retries`` times, at temperature 0.7 so a
deterministic judge can answer otherwise), then excluded and counted. A request that fails
after the client's retries is recorded as an error and asked again on the next run; it is
excluded (and counted) from this run's score, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eva_runtime.errors import InputError
from eva_runtime.progress import task, warn

Messages = list[dict[str, str]]
RETRY_TEMPERATURE = 0.7


class Judge(Protocol):
    """Answers judge prompts; ``ask`` returns (reply, error) per prompt, in order."""

    id: str

    def ask(
        self,
        prompts: Sequence[Messages],
        *,
        temperature: float,
        seed: int,
        on_done: Callable[[int, str | None, str | None], None],
    ) -> None: ...

    def close(self) -> None: ...


class EndpointJudge:
    """A judge behind an OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        max_tokens: int = 1024,
    ) -> None:
        import openai

        self.id = f"{model} at {base_url}"
        self.model = model
        self.base_url = base_url
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self._client: Any = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            max_retries=max_retries,
            timeout=timeout,
        )

    def _one(
        self, messages: Messages, temperature: float, seed: int
    ) -> tuple[str | None, str | None]:
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=temperature,
                max_tokens=self.max_tokens,
                seed=seed,
            )
        except openai.APIStatusError as exc:
            return None, f"HTTP {exc.status_code} from {self.base_url}"
        except openai.APITimeoutError:
            return None, f"timed out waiting for {self.base_url}"
        except openai.APIConnectionError as exc:
            return None, f"cannot reach {self.base_url} ({exc})"
        except Exception as exc:  # a reply the client cannot read (not JSON...)
            return None, f"unreadable reply from {self.base_url} ({type(exc).__name__}: {exc})"
        choices = getattr(response, "choices", None) or []
        if not choices or getattr(choices[0], "message", None) is None:
            return None, f"no choices in the reply from {self.base_url}"
        return choices[0].message.content or "", None

    def ask(
        self,
        prompts: Sequence[Messages],
        *,
        temperature: float,
        seed: int,
        on_done: Callable[[int, str | None, str | None], None],
    ) -> None:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {
                pool.submit(self._one, m, temperature, seed): i for i, m in enumerate(prompts)
            }
            try:
                for future in as_completed(futures):
                    reply, error = future.result()
                    on_done(futures[future], reply, error)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        self._client.close()


class LocalJudge:
    """A judge model run in this process by a generation backend (greedy by default)."""

    def __init__(self, model: str, *, backend: str = "auto", max_tokens: int = 1024) -> None:
        self.id = f"local:{model}"
        self.model = model
        self.backend = backend
        self.max_tokens = max_tokens
        self._gen: Any = None  # loaded at the first ask: after the answering model is gone

    def _generator(self) -> Any:
        if self._gen is None:
            from eva_runtime.backends import make_generator
            from eva_runtime.errors import first_line

            try:
                self._gen = make_generator(self.backend, self.model)
            except OSError as exc:
                raise InputError(
                    f"judge model {self.model}: cannot be loaded ({first_line(exc)})"
                ) from None
        return self._gen

    def ask(
        self,
        prompts: Sequence[Messages],
        *,
        temperature: float,
        seed: int,
        on_done: Callable[[int, str | None, str | None], None],
    ) -> None:
        from eva_runtime.backends import SamplingParams

        params = SamplingParams(
            n=1, temperature=temperature, top_p=1.0, max_new_tokens=self.max_tokens, seed=seed
        )
        step = 8
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            outs = self._generator().generate(chunk, params)
            for k, out in enumerate(outs):
                on_done(start + k, out[0].text, None)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


# --------------------------------------------------------------------------- the store


def ask_key(judge_id: str, messages: Messages) -> str:
    raw = json.dumps([judge_id, messages], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()[:20]


class JsonlStore:
    """Append-only JSONL records with a ``key``; a line cut short by a kill is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot be read ({exc.strerror or exc}); move it away to start over"
            ) from None
        lines = data.split(b"\n")
        cut = not data.endswith(b"\n") and lines and lines[-1]
        good = bytearray()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "key" not in record:
                    raise ValueError("no key")
            except ValueError:
                if cut and number == len(lines):
                    warn(f"{self.path}: line {number} was cut short (a killed run); asked again")
                    self.path.write_bytes(bytes(good))
                    return
                raise InputError(
                    f"{self.path}:{number}: not a record this benchmark wrote; move the file "
                    "away to start over"
                ) from None
            self.records.append(record)
            good += line + b"\n"

    def put(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
            self.records.append(record)


@dataclass
class Outcome:
    """What came of one judge prompt: the parsed value (None: excluded) and the replies."""

    key: str
    parsed: Any
    status: str  # ok | unparsed | error
    replies: list[str]
    error: str | None = None


def judge_all(
    judge: Judge,
    store: JsonlStore,
    prompts: Sequence[Messages],
    parse: Callable[[str], Any],
    *,
    parse_retries: int = 2,
    seed: int = 0,
    label: str = "judging",
) -> list[Outcome]:
    """Ask ``judge`` every prompt the store has no final answer for; one Outcome per prompt.

    Final: a parsed reply, or ``1 + parse_retries`` unparsed ones. Errors are not final.
    """
    keys = [ask_key(judge.id, m) for m in prompts]
    history: dict[str, list[dict[str, Any]]] = {}
    for r in store.records:
        history.setdefault(r["key"], []).append(r)

    def state(key: str) -> Outcome:
        replies, parsed, status, error = [], None, "missing", None
        for r in history.get(key, []):
            if r.get("status") == "error":
                error = r.get("error")
                continue
            replies.append(r.get("reply") or "")
            if r.get("status") == "ok":
                parsed, status = r.get("parsed"), "ok"
        if status != "ok" and len(replies) > parse_retries:
            status = "unparsed"
        elif status != "ok" and error and not replies:
            status = "error"
        return Outcome(key, parsed, status, replies, error)

    with task(label, total=len(prompts)) as advance:
        advance(sum(1 for k in keys if state(k).status in ("ok", "unparsed")))
        for attempt in range(parse_retries + 1):
            todo = [i for i, k in enumerate(keys) if state(k).status not in ("ok", "unparsed")]
            if attempt > 0:
                # Only prompts whose replies so far had no verdict: errors wait for a rerun.
                todo = [i for i in todo if state(keys[i]).replies]
            if not todo:
                break

            def done(j: int, reply: str | None, error: str | None, todo: list[int] = todo) -> None:
                i = todo[j]
                key = keys[i]
                n = len(state(key).replies)
                record: dict[str, Any]
                if error is not None:
                    record = {"key": key, "status": "error", "error": error, "judge": judge.id}
                else:
                    value = parse(reply or "")
                    record = {
                        "key": key,
                        "judge": judge.id,
                        "attempt": n + 1,
                        "prompt": prompts[i],
                        "reply": reply,
                        "parsed": value,
                        "status": "ok" if value is not None else "unparsed",
                    }
                store.put(record)
                history.setdefault(key, []).append(record)
                if state(key).status in ("ok", "unparsed"):
                    advance(1)

            from eva_runtime.metrics import current

            current().judge_requests(len(todo))
            temperature = 0.0 if attempt == 0 else RETRY_TEMPERATURE
            judge.ask(
                [prompts[i] for i in todo],
                temperature=temperature,
                seed=seed + attempt,
                on_done=done,
            )
    return [state(k) for k in keys]
