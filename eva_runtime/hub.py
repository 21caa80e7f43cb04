"""One download per hub model: fetched once into the model cache, pinned, checked, recorded.

The prepare step downloads every hub model the spec names (the policy, the reward model, an
evolver, benchmark judges) into the Hugging Face cache (``HF_HUB_CACHE``; in a cluster a
volume the step pods share), resolves each model's revision to a commit, checks every file
against the hub's checksums (sha256 of LFS files, the git blob id of the others) and
records commit and checksums in the run's ``prepare/models.json``. Every later step loads
the recorded commit from the cache without asking the hub (the operator's step pods run
with ``HF_HUB_OFFLINE=1``), so every step and iteration sees the same weights even when the
model's branch moves on.

A lock per model in the cache makes a second process that needs the same model (another
shard, another run sharing the cache) wait for the first download and use it. A model the
cache no longer holds is fetched again at its recorded commit where the hub is reachable,
and is a clear error where it is not.

Here is the shell around huggingface_hub; the decisions (what to fetch, whether a cached
copy is complete, whether there is room) are small pure functions below it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eva_runtime.artifacts import atomic_write_bytes, atomic_write_json
from eva_runtime.models import ModelError, exclusive_lock, is_hub_model
from eva_runtime.progress import note
from eva_runtime.spec import ModelRef
from eva_runtime.timing import timed

__all__ = ["RECORD", "download_models", "local_model", "read_record"]

RECORD = "models.json"  # in the prepare step's folder (listed in its _SUCCESS.json digests)
RECORD_VERSION = 1
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
Files = dict[str, dict[str, Any]]  # path in the repo -> {"size", "sha256" | "blob"}


# --------------------------------------------------------------------------- pure decisions


def missing_files(files: Files, sizes: dict[str, int | None]) -> list[str]:
    """The files of ``files`` that a folder lacks or holds with another size (``sizes``: what
    the folder holds, None for a file that is not there)."""
    return [p for p, f in files.items() if sizes.get(p) != int(f["size"])]


def bytes_to_fetch(files: Files, sizes: dict[str, int | None]) -> int:
    return sum(int(files[p]["size"]) for p in missing_files(files, sizes))


def room_problem(needed: int, free: int, where: str, ref: str) -> str | None:
    """Why ``needed`` bytes cannot be written where ``free`` are free, or None. A margin of
    1% (at least 64 MiB) is kept for the cache's own bookkeeping."""
    margin = max(64 << 20, needed // 100)
    if needed == 0 or needed + margin <= free:
        return None
    return (
        f"model {ref} needs {_gb(needed)} in the model cache {where}, which has {_gb(free)} "
        "free: make room, or give the cache a larger volume"
    )


def git_blob_id(data_size: int, chunks: Iterator[bytes]) -> str:
    """The git blob id (sha1 of ``blob <size>\\0`` + content) the hub lists for non-LFS files."""
    h = hashlib.sha1(f"blob {data_size}\0".encode(), usedforsecurity=False)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


# --------------------------------------------------------------------------- the record


def read_record(path: Path) -> dict[str, dict[str, Any]]:
    """The models a run's prepare step recorded (ref -> entry); {} where none is."""
    import json

    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        models = doc["models"]
        if not isinstance(models, dict):
            raise TypeError("models is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: the run's model record cannot be read ({exc})") from None
    return models


def download_models(refs: list[ModelRef], record: Path) -> dict[str, dict[str, Any]]:
    """The prepare step: every hub model of ``refs`` in the cache, checked; the record written.

    Returns ref -> entry (commit, revision asked for, files with checksums, bytes, whether
    this call downloaded it, the spec fields that name it).
    """
    models: dict[str, dict[str, Any]] = {}
    asked: dict[str, ModelRef] = {}
    for m in refs:
        try:
            if not is_hub_model(m.ref):
                continue
        except ModelError:  # a local path that is not there: the step that loads it says so
            continue
        first = asked.get(m.ref)
        if first is not None:
            if first.revision != m.revision:
                raise ModelError(
                    f"spec.{m.revision_field}: {m.ref} is also {first.field} at revision "
                    f"{first.revision or 'default'}; one model, one revision (give both the same)"
                )
            models[m.ref]["fields"].append(m.field)
            continue
        asked[m.ref] = m
        models[m.ref] = {**fetch(m), "fields": [m.field]}
    if models:
        from huggingface_hub import constants

        atomic_write_json(
            record, {"version": RECORD_VERSION, "endpoint": constants.ENDPOINT, "models": models}
        )
    return models


def local_model(ref: str, field: str, record: Path) -> str:
    """The folder of hub model ``ref`` for a step after prepare: the recorded commit, from the
    cache; fetched again (same commit, checked) only where the cache lost it and the hub is
    reachable."""
    from huggingface_hub import constants

    entry = read_record(record).get(ref)
    cache = Path(constants.HF_HUB_CACHE)
    if entry is None and not record.exists():
        # A run prepared before models were recorded: fetch as prepare does now (offline:
        # the cached copy of the default branch, or a clear error).
        commit = str(fetch(ModelRef(field, ref, None))["commit"])
        return str(snapshot_folder(cache, ref, commit))
    if entry is None:
        raise ModelError(
            f"spec.{field}: hub model {ref} is not in the run's model record {record}; the "
            "prepare step downloads every hub model the spec names (was prepare run with "
            "another spec?)"
        )
    commit, files = str(entry["commit"]), dict(entry["files"])
    folder = snapshot_folder(cache, ref, commit)
    if not missing_files(files, folder_sizes(folder, files)):
        return str(folder)
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"spec.{field}: hub model {ref} at commit {commit} (recorded by this run's prepare "
            f"step) is missing from the model cache {cache}, and the hub is offline here "
            "(HF_HUB_OFFLINE). Was the cache emptied or another cache volume mounted? Run "
            "where the hub is reachable to fetch it again, or restore the cache."
        )
    fetch(ModelRef(field, ref, commit), expected=files)
    return str(folder)


# --------------------------------------------------------------------------- the shell


def snapshot_folder(cache: Path, ref: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=ref, repo_type="model") / "snapshots" / commit


def folder_sizes(folder: Path, files: Files) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for p in files:
        try:
            out[p] = (folder / p).stat().st_size
        except OSError:
            out[p] = None
    return out


def fetch(m: ModelRef, *, expected: Files | None = None) -> dict[str, Any]:
    """Model ``m`` in the cache, downloaded at most once across processes; its entry."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    with _hub_errors(m, cache):
        if constants.HF_HUB_OFFLINE:
            return _offline_entry(m, cache)
        from huggingface_hub import HfApi

        api = HfApi()
        commit = m.revision if m.revision and _COMMIT.match(m.revision) else None
        if commit is None:
            commit = api.model_info(m.ref, revision=m.revision).sha
            assert commit, f"the hub gave no commit for {m.ref}"
        folder = snapshot_folder(cache, m.ref, commit)
        stamp = cache / ".eva" / "checked" / folder.parent.parent.name / f"{commit}.json"
        lock = cache / ".eva" / "locks" / f"{folder.parent.parent.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock, waiting=f"waiting for another process downloading {m.ref}"):
            _point_ref(folder, m.revision, commit)
            files = expected or _checked_files(stamp)
            if files is not None and not missing_files(files, folder_sizes(folder, files)):
                return _entry(m, commit, files, downloaded=False)
            files = expected or _hub_files(api, m.ref, commit)
            needed = bytes_to_fetch(files, folder_sizes(folder, files))
            cache.mkdir(parents=True, exist_ok=True)
            problem = room_problem(needed, shutil.disk_usage(cache).free, str(cache), m.ref)
            if problem:
                raise ModelError(f"spec.{m.field}: {problem}")
            note(
                f"downloading {m.ref} at {commit[:12]} ({len(files)} files, {_gb(needed)}) "
                f"into {cache}"
            )
            with timed("download"):
                _snapshot(m.ref, commit, cache)
                _verify(folder, files, m)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stamp, {"ref": m.ref, "commit": commit, "files": files})
            return _entry(m, commit, files, downloaded=needed > 0) | {"bytes_fetched": needed}


def _point_ref(folder: Path, revision: str | None, commit: str) -> None:
    """Record in the cache that the branch or tag resolved to ``commit`` (the cache's own
    ``refs/<name>`` file), so that an offline run finds the cached copy by its name too."""
    name = revision or "main"
    if _COMMIT.match(name):
        return
    ref = folder.parent.parent / "refs" / name
    with contextlib.suppress(OSError):
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            atomic_write_bytes(ref, commit.encode())


def _entry(m: ModelRef, commit: str, files: Files, *, downloaded: bool) -> dict[str, Any]:
    return {
        "revision": m.revision,
        "commit": commit,
        "files": files,
        "bytes": sum(int(f["size"]) for f in files.values()),
        "downloaded": downloaded,
        "bytes_fetched": 0,
    }


def _offline_entry(m: ModelRef, cache: Path) -> dict[str, Any]:
    """The hub is offline here: use the cached copy of the revision, recorded as found."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(m.ref, revision=m.revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelError(
            f"spec.{m.field}: hub model {m.ref}"
            f"{f' at revision {m.revision}' if m.revision else ''} is not in the model cache "
            f"{cache} and the hub is offline here (HF_HUB_OFFLINE): download it first, or give "
            "a local folder"
        ) from None
    files: Files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return _entry(m, folder.name, files, downloaded=False) | {"checked": False}


def _checked_files(stamp: Path) -> Files | None:
    import json

    try:
        return dict(json.loads(stamp.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hub_files(api: Any, ref: str, commit: str) -> Files:
    files: Files = {}
    for f in api.list_repo_tree(ref, revision=commit, recursive=True):
        if not hasattr(f, "size") or not hasattr(f, "blob_id"):  # a folder
            continue
        if f.lfs is not None:
            files[f.path] = {"size": int(f.lfs.size), "sha256": f.lfs.sha256}
        else:
            files[f.path] = {"size": int(f.size), "blob": f.blob_id}
    return files


def _snapshot(ref: str, commit: str, cache: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(ref, revision=commit, cache_dir=cache)


def _verify(folder: Path, files: Files, m: ModelRef) -> None:
    """Every file against its checksum; a bad one is removed (so a retry fetches it again)."""
    for path, f in files.items():
        target = folder / path
        size = int(f["size"])
        if not target.is_file() or target.stat().st_size != size:
            bad = "is missing" if not target.is_file() else "has the wrong size"
        else:
            with target.open("rb") as fh:
                chunks = iter(lambda: fh.read(1 << 20), b"")
                if "sha256" in f:
                    h = hashlib.sha256()
                    for chunk in chunks:
                        h.update(chunk)
                    ok = h.hexdigest() == f["sha256"]
                else:
                    ok = git_blob_id(size, chunks) == f["blob"]
            if ok:
                continue
            bad = "does not match the hub's checksum"
        with contextlib.suppress(OSError):
            os.unlink(target.resolve())
            os.unlink(target)
        raise ModelError(
            f"spec.{m.field}: {m.ref} file {path} {bad} after the download (removed; the next "
            "attempt fetches it again)"
        )


@contextlib.contextmanager
def _hub_errors(m: ModelRef, cache: Path) -> Iterator[None]:
    """The hub's and the volume's failures as one clear line naming the spec field."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"spec.{m.field}: hub model {m.ref}"
    try:
        yield
    except ModelError:
        raise
    except RevisionNotFoundError:
        raise ModelError(
            f"spec.{m.revision_field}: {m.ref} has no revision {m.revision!r} on "
            f"{constants.ENDPOINT}; give a branch, tag or commit that exists"
        ) from None
    except GatedRepoError:
        raise ModelError(
            f"{where} is gated: accept its terms on the hub with your account, and give the "
            "run your token (spec.credentials.hubToken in a cluster, HF_TOKEN here)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{where} is not on {constants.ENDPOINT}, or it is private and no token with "
            "access was given (spec.credentials.hubToken in a cluster, HF_TOKEN here)"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no"
        raise ModelError(f"{where}: the hub answered with status {status} ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModelError(
                f"{where}: the model cache {cache} is full ({exc.strerror}); make room, or give "
                "the cache a larger volume"
            ) from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ModelError(
                f"{where}: the model cache {cache} is not writable ({exc}); set HF_HOME to a "
                "writable folder"
            ) from None
        raise ModelError(f"{where}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0].startswith("httpx"):  # connect, timeout, TLS
            raise ModelError(
                f"{where}: cannot reach the hub at {constants.ENDPOINT} ({exc}); check the "
                "network, or set HF_ENDPOINT to a reachable mirror"
            ) from None
        raise
