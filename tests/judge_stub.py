"""A local OpenAI-compatible judge server whose replies a test scripts: good verdicts, garbage,
429s, 500s, slow answers. It counts every request, so a test can tell what was asked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# reply(request body, request number) -> (HTTP status, reply text or None, delay seconds)
Behaviour = Callable[[dict[str, Any], int], tuple[int, str | None, float]]


class JudgeStub:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.authorizations.append(self.headers.get("Authorization"))
                    n = len(stub.requests)
                status, text, delay = stub.behaviour(body, n)
                if delay:
                    time.sleep(delay)
                if status != 200:
                    payload = json.dumps({"error": {"message": f"stub status {status}"}}).encode()
                elif text is None:
                    payload = b"this is not json"
                else:
                    payload = json.dumps(
                        {
                            "id": f"c{n}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model", "stub"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 1,
                                "completion_tokens": 1,
                                "total_tokens": 2,
                            },
                        }
                    ).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def user_text(self, body: dict[str, Any]) -> str:
        return body["messages"][-1]["content"]


@contextmanager
def judge_stub(behaviour: Behaviour) -> Iterator[JudgeStub]:
    stub = JudgeStub(behaviour)
    thread = threading.Thread(target=stub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()


def always(text: str) -> Behaviour:
    return lambda body, n: (200, text, 0.0)
