"""A local stand-in for the Hugging Face hub: serves model folders over the hub's HTTP API.

Just enough of the API for ``huggingface_hub`` to resolve revisions, list a repo's files and
download them (``HF_ENDPOINT`` pointed at it): ``/api/models/<repo>[/revision/<rev>]``,
``/api/models/<repo>/tree/<rev>`` and ``HEAD``/``GET /<repo>/resolve/<rev>/<file>``, with
the hub's error codes (RepoNotFound, RevisionNotFound, GatedRepo). Every request is
counted, so a test can tell how often a file was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    gated: bool = False
    # Per file: a size to list instead of the real one, or bytes to serve instead.
    listed_size: dict[str, int] = field(default_factory=dict)
    served: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


def commit_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


class HubStub:
    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.delay_s = delay_s  # per file GET: makes a download last long enough to race
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, folder: Path, *, ref: str = "main") -> str:
        """Publish ``folder`` as a commit of ``repo_id`` and point ``ref`` at it."""
        files = folder_files(folder)
        commit = commit_of(files)
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[commit] = files
        repo.refs[ref] = commit
        return commit

    def downloads(self, name: str | None = None) -> list[str]:
        """The file GETs so far (``/<repo>/resolve/<rev>/<file>``), optionally of one file."""
        with self._lock:
            gets = [p for m, p in self.requests if m == "GET" and "/resolve/" in p]
        return [p for p in gets if name is None or p.endswith("/" + name)]

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                stub._serve(self, head=True)

            def do_GET(self) -> None:
                stub._serve(self, head=False)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._api(h, "/".join(parts[2:4]), parts[4:])
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=head)
        else:
            self._error(h, 404, "RepoNotFound", f"no route {path}")

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", f"Repository {repo_id} not found")
        elif repo.gated:
            self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted")
            return None
        return repo

    def _api(self, h: BaseHTTPRequestHandler, repo_id: str, rest: list[str]) -> None:
        repo = self._repo(h, repo_id)
        if repo is None:
            return
        kind = rest[0] if rest else "revision"
        rev = "/".join(rest[1:]) if len(rest) > 1 else "main"
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        files = repo.commits[commit]
        if kind == "revision":
            body = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": n} for n in files]}
        elif kind == "tree":
            body = [self._entry(repo, n, data) for n, data in sorted(files.items())]
        else:
            self._error(h, 404, "EntryNotFound", f"no api {kind}")
            return
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _entry(self, repo: Repo, name: str, data: bytes) -> dict[str, object]:
        size = repo.listed_size.get(name, len(data))
        blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False)
        entry: dict[str, object] = {
            "type": "file",
            "path": name,
            "size": size,
            "oid": blob.hexdigest(),
        }
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            entry["lfs"] = {"oid": sha, "size": size, "pointerSize": 134}
        return entry

    def _file(
        self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, *, head: bool
    ) -> None:
        repo = self._repo(h, repo_id)
        if repo is None:
            return
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        files = repo.commits[commit]
        if name not in files:
            self._error(h, 404, "EntryNotFound", f"{name} not in {repo_id}")
            return
        data = repo.served.get(name, files[name])
        etag = (
            hashlib.sha256(files[name]).hexdigest()
            if name.endswith(LFS_SUFFIXES)
            else hashlib.sha1(
                f"blob {len(data)}\0".encode() + data, usedforsecurity=False
            ).hexdigest()
        )
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "Content-Type": "application/octet-stream",
        }
        if not head and self.delay_s:
            time.sleep(self.delay_s)
        self._send(h, 200, b"" if head else data, headers, length=len(data))

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        self._send(h, status, body, headers | {"Content-Type": "application/json"})

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str],
        *,
        length: int | None = None,
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if body:
            h.wfile.write(body)
