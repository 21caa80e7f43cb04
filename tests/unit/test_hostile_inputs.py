"""Hostile inputs through the real `eva` command (in process): each case gets exit code 1 or 2,
a message that names what and where, no traceback, and an existing run directory unchanged.

The classes (README, "Errors"): damaged run directories, hangs (YAML bombs), tracebacks,
misleading messages, and inputs that were silently accepted although they cannot work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eva_runtime.cli import main
from eva_runtime.spec import SpecError, parse_run

pytestmark = pytest.mark.timeout(120)

GOOD_SPEC = {
    "policy": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    "rewardModel": {"type": "python", "function": "eva_runtime.rewards:length_target"},
    "prompts": {"source": "prompts.jsonl"},
    "iterations": 2,
}


def manifest(**spec: object) -> dict:
    import copy

    return {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": "h"},
        "spec": copy.deepcopy({**GOOD_SPEC, **spec}),
    }


def with_section(section: str, **fields: object) -> dict:
    doc = manifest()
    doc["spec"][section] = {**doc["spec"].get(section, {}), **fields}
    return doc


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def invoke(args: list[str], cwd: Path) -> tuple[int, str]:
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        # Not what another test left in this process's environment: only the arguments count.
        result = CliRunner().invoke(
            main, args, env={"EVA_SPEC_YAML": None, "JOB_COMPLETION_INDEX": None}
        )
    finally:
        os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"eva {' '.join(args)} raised {result.exception!r}:\n{result.output}")
    return result.exit_code, result.output


def check(args: list[str], tmp: Path, code: int, *needles: str) -> None:
    run_dir = tmp / "run"
    before = tree_digest(run_dir) if run_dir.exists() else None
    got, out = invoke(args, tmp)
    assert got == code, f"eva {' '.join(args)}: exit {got}, expected {code}\n{out}"
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, f"eva {' '.join(args)}: {needle!r} not in\n{out}"
    if before is not None:
        assert tree_digest(run_dir) == before, "the run directory changed"


# --------------------------------------------------------------------------- manifests

BOMB = """apiVersion: eva.dev/v1alpha1
kind: EvaRun
metadata: {name: bomb}
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
spec: {}
"""


def _nested(depth: int) -> str:
    return "apiVersion: eva.dev/v1alpha1\nkind: EvaRun\nx: " + "[" * depth + "]" * depth + "\n"


TEXT_CASES: list[tuple[str, str, list[str]]] = [
    ("alias-bomb", BOMB, ["anchors and aliases", "line 8"]),
    (
        "alias-bomb-in-spec",
        BOMB.replace("spec: {}", "spec: {x: *f}"),
        ["anchors and aliases"],
    ),
    ("nesting-70", _nested(70), ["nested deeper than 64"]),
    ("nesting-5000", _nested(5000), ["nested deeper than 64"]),
    (
        "duplicate-top-key",
        "apiVersion: eva.dev/v1alpha1\nkind: EvaRun\nmetadata: {name: a}\nmetadata: {name: b}\n",
        ["line 4", "duplicate key 'metadata' (first on line 3)"],
    ),
    (
        "duplicate-nested-key",
        yaml.safe_dump(manifest()) + "  iterations: 3\n",
        ["duplicate key 'iterations'"],
    ),
    (
        "duplicate-flow-key",
        "apiVersion: eva.dev/v1alpha1\nkind: EvaRun\nmetadata: {name: a, name: b}\n",
        ["duplicate key 'name'"],
    ),
    ("syntax", "apiVersion: [eva\n", ["line", "not valid YAML"]),
    ("tabs", "apiVersion: eva.dev/v1alpha1\n\tkind: EvaRun\n", ["line 2", "not valid YAML"]),
    ("empty", "", ["no EvaRun document"]),
    ("only-comments", "# nothing\n", ["no EvaRun document"]),
    ("a-list", "- 1\n- 2\n", ["(root): must be a mapping"]),
    ("a-string", "hello\n", ["(root): must be a mapping"]),
    ("kind-case", yaml.safe_dump({**manifest(), "kind": "evarun"}), ["kind: must be EvaRun"]),
    (
        "kind-other",
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap"}),
        ["no EvaRun document", "'ConfigMap'"],
    ),
    (
        "api-version",
        yaml.safe_dump({**manifest(), "apiVersion": "eva.dev/v2"}),
        ["apiVersion: must be eva.dev/v1alpha1"],
    ),
    ("top-level-typo", yaml.safe_dump({**manifest(), "spek": {}}), ["spek: unknown field"]),
    (
        "metadata-typo",
        yaml.safe_dump({**manifest(), "metadata": {"name": "a", "labls": {"a": "b"}}}),
        ["metadata.labls: unknown field"],
    ),
    (
        "label-not-text",
        yaml.safe_dump({**manifest(), "metadata": {"name": "a", "labels": {"a": [1]}}}),
        ["metadata.labels.a"],
    ),
    (
        "bad-name",
        yaml.safe_dump({**manifest(), "metadata": {"name": "Not_A_Label"}}),
        ["metadata.name: must be a DNS label"],
    ),
    ("no-spec", yaml.safe_dump({k: v for k, v in manifest().items() if k != "spec"}), ["spec"]),
]


def _value_case(name: str, doc: dict, needle: str) -> tuple[str, str, list[str]]:
    return (name, yaml.safe_dump(doc), [needle])


VALUE_CASES = [
    _value_case(
        "beta-inf", with_section("solver", beta=float("inf")), "spec.solver.beta: must be a finite"
    ),
    _value_case(
        "beta-nan", with_section("solver", beta=float("nan")), "spec.solver.beta: must be a finite"
    ),
    _value_case("epochs-inf", with_section("solver", epochs=float("inf")), "spec.solver.epochs"),
    _value_case(
        "lr-nan", with_section("solver", learningRate=float("nan")), "spec.solver.learningRate"
    ),
    _value_case(
        "temperature-inf",
        with_section("generation", temperature=float("-inf")),
        "spec.generation.temperature: must be a finite",
    ),
    _value_case("top-p-nan", with_section("generation", topP=float("nan")), "spec.generation.topP"),
    _value_case(
        "sample-fraction-nan",
        with_section("creator", sampleFraction=float("nan")),
        "spec.creator.sampleFraction: must be a finite",
    ),
    _value_case(
        "iterations-true", manifest(iterations=True), "spec.iterations: must be a number, not true"
    ),
    _value_case("seed-false", manifest(seed=False), "spec.seed: must be a number, not false"),
    _value_case(
        "samples-true",
        with_section("generation", samplesPerPrompt=True),
        "spec.generation.samplesPerPrompt: must be a number, not true",
    ),
    _value_case(
        "max-tokens-true",
        with_section("generation", maxNewTokens=True),
        "spec.generation.maxNewTokens: must be a number",
    ),
    _value_case(
        "beta-true", with_section("solver", beta=True), "spec.solver.beta: must be a number"
    ),
    _value_case("iterations-zero", manifest(iterations=0), "spec.iterations: must be greater"),
    _value_case("iterations-text", manifest(iterations="two"), "spec.iterations"),
    _value_case("seed-negative", manifest(seed=-1), "spec.seed"),
    _value_case(
        "informativeness",
        with_section("creator", informativeness="gapp"),
        "spec.creator.informativeness: must be one of",
    ),
    _value_case("algorithm", with_section("solver", algorithm="ppo"), "spec.solver.algorithm"),
    _value_case("reward-type", with_section("rewardModel", type="magic"), "spec.rewardModel.type"),
    _value_case("unknown-spec-key", manifest(iteratons=2), "spec.iteratons: unknown field"),
    _value_case(
        "unknown-section-key",
        with_section("solver", betta=0.1),
        "spec.solver.betta: unknown field",
    ),
    _value_case(
        "policy-missing", {**manifest(), "spec": {"iterations": 1}}, "spec.policy: required"
    ),
    _value_case(
        "samples-one",
        with_section("generation", samplesPerPrompt=1),
        "spec.generation.samplesPerPrompt: must be greater than or equal to 2",
    ),
    _value_case(
        "samples-huge",
        with_section("generation", samplesPerPrompt=10**12),
        "spec.generation.samplesPerPrompt: must be less than or equal to 1024",
    ),
    _value_case(
        "tokens-huge",
        with_section("generation", maxNewTokens=10**15),
        "spec.generation.maxNewTokens: must be less than or equal to 1048576",
    ),
    _value_case("epochs-huge", with_section("solver", epochs=1e9), "spec.solver.epochs"),
    _value_case("seed-huge", manifest(seed=2**70), "spec.seed"),
    _value_case(
        "lr-scheduler",
        with_section("solver", lrScheduler="cosinus"),
        "spec.solver.lrScheduler: must be one of",
    ),
    _value_case(
        "base-url-spaces",
        with_section(
            "generation",
            backend="openai",
            endpoint={"baseUrl": "http://my server:8000/v1", "model": "m"},
        ),
        "spec.generation.endpoint.baseUrl: must not contain spaces",
    ),
    _value_case(
        "base-url-port",
        with_section(
            "generation", backend="openai", endpoint={"baseUrl": "http://h:99999/v1", "model": "m"}
        ),
        "spec.generation.endpoint.baseUrl: not a valid URL",
    ),
    _value_case(
        "base-url-no-host",
        with_section(
            "generation", backend="openai", endpoint={"baseUrl": "http:///v1", "model": "m"}
        ),
        "spec.generation.endpoint.baseUrl: names no host",
    ),
    *[
        _value_case(name, with_section("evaluation", benchmarks=[bench]), needle)
        for name, bench, needle in (
            (
                "bench-two-judges",
                {
                    "suite": "mt-bench",
                    "questions": "q.jsonl",
                    "judge": {"model": "j", "endpoint": {"baseUrl": "http://x/v1", "model": "m"}},
                },
                "spec.evaluation.benchmarks[0].judge: give exactly one of endpoint",
            ),
            (
                "bench-no-judge",
                {"suite": "mt-bench", "questions": "q.jsonl", "judge": {}},
                "spec.evaluation.benchmarks[0].judge: give exactly one of endpoint",
            ),
            (
                "bench-suite",
                {"suite": "alpaca", "questions": "q.jsonl", "judge": {"model": "j"}},
                "spec.evaluation.benchmarks[0].suite: must be one of 'arena-hard'",
            ),
            (
                "bench-arena-no-answers",
                {"suite": "arena-hard", "questions": "q.jsonl", "judge": {"model": "j"}},
                "spec.evaluation.benchmarks[0].answers: required for arena-hard",
            ),
            (
                "bench-name",
                {
                    "suite": "mt-bench",
                    "name": "Bad Name",
                    "questions": "q",
                    "judge": {"model": "j"},
                },
                "spec.evaluation.benchmarks[0].name: 'Bad Name' must be lowercase",
            ),
            (
                "bench-timeout",
                {"suite": "mt-bench", "questions": "q", "judge": {"model": "j", "timeoutS": 0}},
                "spec.evaluation.benchmarks[0].judge.timeoutS: must be greater than 0",
            ),
            (
                "bench-judge-url",
                {
                    "suite": "mt-bench",
                    "questions": "q",
                    "judge": {"endpoint": {"baseUrl": "judge:8000", "model": "m"}},
                },
                "spec.evaluation.benchmarks[0].judge.endpoint.baseUrl: must start with http",
            ),
        )
    ],
    _value_case(
        "revision-with-space",
        with_section("policy", revision="my branch"),
        "spec.policy.revision: String should match pattern",
    ),
    _value_case(
        "revision-without-model",
        with_section("creator", evolve={"evolver": {"type": "policy", "revision": "main"}}),
        "revision: only evolver type model reads it",
    ),
    _value_case(
        "model-cache-claim-name",
        with_section("storage", modelCacheClaim="Models_Cache"),
        "spec.storage.modelCacheClaim: String should match pattern",
    ),
    _value_case(
        "bench-contamination",
        with_section("creator", evolve={"contaminationThreshold": 0}),
        "spec.creator.evolve.contaminationThreshold: must be greater than 0",
    ),
]


@pytest.mark.parametrize(
    ("text", "needles"),
    [(t, n) for _i, t, n in TEXT_CASES + VALUE_CASES],
    ids=[i for i, _t, _n in TEXT_CASES + VALUE_CASES],
)
def test_a_bad_manifest_is_refused_by_validate_naming_the_problem(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    check(["validate", str(path)], tmp_path, 1, "invalid", *needles)
    # `eva run` refuses the same file before any work, with the same message.
    check(["run", str(path), "--workdir", str(tmp_path / "runs")], tmp_path, 2, *needles)
    assert not (tmp_path / "runs").exists()


def test_a_manifest_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xff\xfe\x00 kind")
    check(["validate", str(path)], tmp_path, 1, "not UTF-8")
    check(["validate", str(tmp_path / "nope.yaml")], tmp_path, 1, "file not found")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A started run directory (its manifest and a complete prepare step) to leave unharmed."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(manifest()))
    rd = tmp_path / "run"
    (rd / "prepare").mkdir(parents=True)
    (rd / "iter-0").mkdir()
    (rd / "iter-1").mkdir()
    (rd / "evarun.yaml").write_text(yaml.safe_dump(manifest()))
    (rd / "prepare" / "_SUCCESS.json").write_text(json.dumps({"counts": {}, "digests": {}}))
    return rd


def _changed(tmp: Path, **spec: object) -> str:
    path = tmp / "changed.yaml"
    path.write_text(yaml.safe_dump(manifest(**spec)))
    return str(path)


CLI_CASES: list[tuple[str, Callable[[Path], list[str]], int, list[str]]] = [
    (
        "run-iterations-0",
        lambda t: ["run", str(t / "good.yaml"), "--iterations", "0"],
        2,
        ["spec.iterations: must be greater than or equal to 1"],
    ),
    (
        "run-iterations-negative",
        lambda t: ["run", str(t / "good.yaml"), "--iterations", "-5"],
        2,
        ["spec.iterations"],
    ),
    (
        "run-metrics-port",
        lambda t: ["run", str(t / "good.yaml"), "--metrics-port", "99999"],
        2,
        ["--metrics-port", "99999 is not in the range"],
    ),
    (
        "phase-num-shards-0",
        lambda t: [
            "phase",
            "generate",
            "--spec",
            str(t / "good.yaml"),
            "--run-dir",
            str(t / "run"),
            "--num-shards",
            "0",
        ],
        2,
        ["--num-shards 0: must be at least 1"],
    ),
    (
        "phase-num-shards-negative",
        lambda t: [
            "phase",
            "generate",
            "--spec",
            str(t / "good.yaml"),
            "--run-dir",
            str(t / "run"),
            "--num-shards",
            "-2",
        ],
        2,
        ["--num-shards -2: must be at least 1"],
    ),
    (
        "phase-shard-outside",
        lambda t: [
            "phase",
            "generate",
            "--spec",
            str(t / "good.yaml"),
            "--run-dir",
            str(t / "run"),
            "--shard",
            "5",
            "--num-shards",
            "2",
        ],
        2,
        ["--shard 5: must be in 0..1"],
    ),
    (
        "phase-shard-on-train",
        lambda t: [
            "phase",
            "train",
            "--spec",
            str(t / "good.yaml"),
            "--run-dir",
            str(t / "run"),
            "--shard",
            "1",
        ],
        2,
        ["apply to generation steps, not train"],
    ),
    (
        "phase-iteration-outside",
        lambda t: [
            "phase",
            "train",
            "--spec",
            str(t / "good.yaml"),
            "--run-dir",
            str(t / "run"),
            "--iteration",
            "7",
        ],
        2,
        ["--iteration 7: the spec has iterations 0..1"],
    ),
    (
        "phase-changed-spec",
        lambda t: ["phase", "prepare", "--spec", _changed(t, seed=9), "--run-dir", str(t / "run")],
        2,
        ["holds this run with a different spec (spec.seed)"],
    ),
    (
        "phase-fewer-iterations",
        lambda t: [
            "phase",
            "prepare",
            "--spec",
            _changed(t, iterations=1),
            "--run-dir",
            str(t / "run"),
        ],
        2,
        ["spec.iterations 1", "may only be raised"],
    ),
    (
        "phase-no-spec",
        lambda t: ["phase", "prepare", "--run-dir", str(t / "run")],
        2,
        ["--spec: give a manifest file"],
    ),
    (
        "phase-unknown-step",
        lambda t: ["phase", "dance", "--run-dir", str(t / "run")],
        2,
        ["'dance' is not one of"],
    ),
    ("summary-not-a-run", lambda t: ["summary", str(t)], 2, ["not a run directory"]),
    ("report-not-a-run", lambda t: ["report", str(t)], 2, ["not a run directory"]),
    (
        "compare-not-a-run",
        lambda t: ["compare", str(t / "run"), str(t)],
        2,
        ["not a run directory"],
    ),
    (
        "report-output-is-a-folder",
        lambda t: ["report", str(t / "run"), "-o", str(t)],
        2,
        ["is a directory"],
    ),
    (
        "report-output-under-a-file",
        lambda t: ["report", str(t / "run"), "-o", str(t / "good.yaml" / "r.html")],
        2,
        ["a file is in the way"],
    ),
    (
        "crd-output-under-a-file",
        lambda t: ["crd", "-o", str(t / "good.yaml" / "crd.yaml")],
        2,
        ["a file is in the way"],
    ),
    (
        "sweep-bad-set",
        lambda t: ["sweep", str(t / "good.yaml"), "--seeds", "1", "--set", "creator.enabeld=true"],
        2,
        ["spec.creator has no field 'enabeld'"],
    ),
    (
        "sweep-bad-seed",
        lambda t: ["sweep", str(t / "good.yaml"), "--seeds", "1,,2"],
        2,
        ["is not a whole number"],
    ),
    (
        "sweep-report-not-a-sweep",
        lambda t: ["sweep", "report", str(t / "run")],
        2,
        ["not a sweep folder"],
    ),
]


@pytest.mark.parametrize(
    ("make_args", "code", "needles"),
    [(a, c, n) for _i, a, c, n in CLI_CASES],
    ids=[i for i, _a, _c, _n in CLI_CASES],
)
def test_cli_misuse_gets_a_clear_error_and_the_run_directory_is_unchanged(
    tmp_path: Path,
    run_dir: Path,
    make_args: Callable[[Path], list[str]],
    code: int,
    needles: list[str],
) -> None:
    check(make_args(tmp_path), tmp_path, code, *needles)


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{broken", "damaged, not a JSON object"), ("[]", "holds list"), ('"x"', "holds str")],
)
def test_a_damaged_step_marker_is_named_with_its_path(
    tmp_path: Path, run_dir: Path, content: str, needle: str
) -> None:
    (run_dir / "iter-0" / "generate").mkdir()
    marker = run_dir / "iter-0" / "generate" / "_SUCCESS.json"
    marker.write_text(content)
    check(["summary", str(run_dir)], tmp_path, 2, str(marker), needle)


# --------------------------------------------------------------------------- fuzzing

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.sampled_from(
    [
        ("iterations",),
        ("seed",),
        ("policy", "model"),
        ("rewardModel", "type"),
        ("generation", "samplesPerPrompt"),
        ("generation", "temperature"),
        ("generation", "maxNewTokens"),
        ("creator", "sampleFraction"),
        ("creator", "evolve", "variantsPerPrompt"),
        ("solver", "beta"),
        ("solver", "algorithm"),
        ("solver", "learningRate"),
        ("prompts", "heldOut"),
        ("metadata", "name"),
        ("resources", "train", "gpus"),
        ("storage", "claimName"),
        ("unknown",),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_fields, _values), min_size=1, max_size=4))
def test_fuzzed_manifests_are_accepted_or_refused_with_field_errors(edits) -> None:
    doc = manifest()
    for path, value in edits:
        node = doc if path[0] == "metadata" else doc["spec"]
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    try:
        run = parse_run(doc, "fuzz.yaml")
    except SpecError as exc:
        assert exc.errors and all(":" in e for e in exc.errors), exc.errors
        return
    # Accepted: every number in it is finite and it survives a round trip.
    from eva_runtime.spec import dump_run

    again = parse_run(yaml.safe_load(dump_run(run)), "again")
    assert again.spec == run.spec


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:&*[]{}-,\n '\"!#|>1")), max_size=200))
def test_fuzzed_yaml_text_never_crashes_the_loader(text: str) -> None:
    import tempfile

    from eva_runtime.spec import load_runs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.yaml"
        path.write_text(text)
        try:
            load_runs(path)
        except SpecError as exc:
            assert exc.errors


# --------------------------------------------------------------------------- prompt files


_PROMPT_PIECES = st.sampled_from(
    ['{"prompt": "a"}', '{"prompt": null}', '{"promt": "b"}', '{"prompt": 3}', "[", "]", "{",
     '"', ",", "\n", "\r\n", "prompt,id", "a,b", '"x\ny"', "\x00", "\xff", "é", " ", "#",
     '[{"prompt": "c"}]', '{"prompt": "dup"}', '{"prompt": "' + "z" * 300 + '"}']
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["p.jsonl", "p.json", "p.csv", "p.parquet", "p.jsonl.gz", "p.txt"]),
    st.lists(_PROMPT_PIECES, max_size=12),
    st.booleans(),
)
def test_fuzzed_prompt_files_load_or_are_refused_naming_the_file(
    name: str, pieces: list[str], latin: bool
) -> None:
    """Whatever a prompt file holds, the one reader returns prompts or raises an InputError
    that names the file: never another exception, never a hang."""
    import tempfile
    import time

    from eva_runtime.errors import EvaError
    from eva_runtime.prompts import load_prompts

    data = "".join(pieces).encode("latin-1" if latin else "utf-8", errors="replace")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        start = time.monotonic()
        try:
            table = load_prompts(str(path))
        except EvaError as exc:
            assert name in str(exc), str(exc)
        else:
            assert table.prompts and all(isinstance(p, str) and p.strip() for p in table.prompts)
            assert len(set(table.ids)) == len(table.ids)
        assert time.monotonic() - start < 5


def _link_loop(tmp: Path) -> str:
    (tmp / "loop.jsonl").symlink_to(tmp / "loop.jsonl")
    return "loop.jsonl"


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / name).write_bytes(data)
        return name

    return make


PROMPT_CASES: list[tuple[str, Callable[[Path], str], list[str]]] = [
    (
        "jsonl-bad-json",
        _write("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b",}\n'),
        ["p.jsonl:2: not valid JSON"],
    ),
    (
        "jsonl-not-object",
        _write("p.jsonl", b'{"prompt": "a"}\n[1]\n'),
        ["p.jsonl:2: each line must be a JSON object"],
    ),
    (
        "jsonl-misspelt-key",
        _write("p.jsonl", b'{"prompt": "a"}\n{"promt": "b"}\n'),
        ["p.jsonl:2: no 'prompt' field (this line has: promt)"],
    ),
    (
        "jsonl-null-prompt",
        _write("p.jsonl", b'{"prompt": "a"}\n{"prompt": null}\n'),
        ["p.jsonl:2: 'prompt' is null"],
    ),
    (
        "jsonl-number-prompt",
        _write("p.jsonl", b'{"prompt": 3}\n'),
        ["p.jsonl:1: 'prompt' must be text, got int"],
    ),
    (
        "jsonl-no-prompt-anywhere",
        _write("p.jsonl", b'{"text": "a"}\n'),
        ["no 'prompt' field in any line (found: text)"],
    ),
    (
        "jsonl-not-utf8",
        _write("p.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n'),
        ["p.jsonl:2: not UTF-8"],
    ),
    ("jsonl-only-empty", _write("p.jsonl", b'{"prompt": "  "}\n'), ["no usable prompts"]),
    ("gz-not-gzip", _write("p.jsonl.gz", b'{"prompt": "a"}\n'), ["is not gzip data"]),
    ("json-not-list", _write("p.json", b'{"prompt": "a"}'), ["must be a list of objects"]),
    ("json-deep", _write("p.json", b"[" * 100_000 + b"]" * 100_000), ["p.json"]),
    (
        "json-missing-key",
        _write("p.json", b'[{"prompt": "a"}, {"x": 1}]'),
        ["p.json, row 2: no 'prompt' field"],
    ),
    (
        "csv-multiline-bad-row",
        _write("p.csv", b'prompt,id\n"two\nlines",1\nok,2\n"bad"x,3\n'),
        ["p.csv:5: not valid CSV"],
    ),
    (
        "csv-too-many-fields",
        _write("p.csv", b'prompt\n"a\nb"\nc,d\n'),
        ["p.csv:4: 2 fields where the header has 1"],
    ),
    ("csv-no-column", _write("p.csv", b"text\na\n"), ["no 'prompt' column (found: text)"]),
    ("parquet-corrupt", _write("p.parquet", b"PAR1 not really"), ["not a readable parquet file"]),
    ("unknown-type", _write("p.txt", b"hello\n"), ["unknown prompt file type"]),
    (
        "missing",
        lambda t: "nope.jsonl",
        ["nope.jsonl (spec.prompts.source): prompt file not found"],
    ),
    ("folder", lambda t: (t / "d.jsonl").mkdir() or "d.jsonl", ["is a folder"]),
    ("symlink-loop", _link_loop, ["a symbolic link that leads nowhere"]),
    ("http-refused", lambda t: "http://127.0.0.1:9/p.jsonl", ["cannot connect", "refused"]),
    ("s3-without-s3fs", lambda t: "s3://bucket/p.jsonl", ["needs another package", "s3fs"]),
    ("unknown-protocol", lambda t: "nosuch://x/p.jsonl", ["cannot open this URI"]),
]


@pytest.mark.parametrize(
    ("make", "needles"),
    [(m, n) for _i, m, n in PROMPT_CASES],
    ids=[i for i, _m, _n in PROMPT_CASES],
)
def test_a_bad_prompt_file_is_named_with_file_and_line(
    tmp_path: Path, make: Callable[[Path], str], needles: list[str]
) -> None:
    import importlib.util

    source = make(tmp_path)
    if source.startswith("s3://") and importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here: the case is about its absence")
    path = tmp_path / "m.yaml"
    doc = manifest()
    doc["spec"]["prompts"] = {"source": source, "heldOut": 0}
    path.write_text(yaml.safe_dump(doc))
    check(
        ["phase", "prepare", "--spec", str(path), "--run-dir", str(tmp_path / "new")],
        tmp_path,
        2,
        *needles,
    )
    assert not (tmp_path / "new" / "prepare" / "_SUCCESS.json").exists()


def test_every_lr_scheduler_the_spec_accepts_is_one_transformers_knows() -> None:
    from typing import get_args

    from transformers import SchedulerType

    from eva_runtime.spec import SolverSpec

    accepted = get_args(SolverSpec.model_fields["lr_scheduler"].annotation)
    assert accepted and set(accepted) <= {t.value for t in SchedulerType}


# --------------------------------------------------------------------------- integrity


def _complete_step(tmp: Path) -> Path:
    import pandas as pd

    from eva_runtime.artifacts import StepDir, write_parquet

    sd = StepDir(tmp / "iter-0" / "generate")
    assert sd.begin()
    write_parquet(sd.path / "rollouts.parquet", pd.DataFrame({"a": list(range(100))}))
    (sd.path / "model").mkdir()
    (sd.path / "model" / "weights.bin").write_bytes(b"w" * 100_000)
    sd.finish({"responses": 100})
    return sd.path


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "rollouts.parquet"),  # truncated
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "rollouts.parquet"),  # same size
        (lambda p: p.unlink(), "rollouts.parquet"),  # removed
        (lambda p: p.write_bytes(b"w" * 100), "model/weights.bin"),  # big file, truncated
    ],
)
def test_a_damaged_file_of_a_complete_step_makes_it_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage, file: str
) -> None:
    from eva_runtime import artifacts
    from eva_runtime.artifacts import SUCCESS, StepDir

    monkeypatch.setattr(artifacts, "HASH_LIMIT_BYTES", 50_000)  # weights.bin counts as big
    step = _complete_step(tmp_path)
    assert StepDir(step).complete()
    damage(step / file)
    artifacts._DIGESTS.clear()  # a later process (a resume) has not hashed anything yet
    assert not StepDir(step).complete()
    assert (step / SUCCESS).exists()  # a reader (a report) writes nothing
    # begin() then redoes the step in a clean folder.
    assert StepDir(step).begin() and not (step / "rollouts.parquet").exists()


def test_an_intact_step_stays_complete_and_big_files_are_not_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eva_runtime import artifacts
    from eva_runtime.artifacts import StepDir

    monkeypatch.setattr(artifacts, "HASH_LIMIT_BYTES", 50_000)
    step = _complete_step(tmp_path)
    weights = step / "model" / "weights.bin"
    weights.write_bytes(b"v" * 100_000)  # same size, other bytes: beyond the hash limit
    assert StepDir(step).complete()
    monkeypatch.setattr(artifacts, "HASH_LIMIT_BYTES", 10**9)
    artifacts._DIGESTS.clear()
    assert not StepDir(step).complete()
