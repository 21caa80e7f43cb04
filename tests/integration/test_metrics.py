"""Step metrics against a real Prometheus and a real Pushgateway (both run as subprocesses).

The binaries come from the Debian packages ``prometheus`` and ``prometheus-pushgateway``
(``make test`` installs them); when they are missing these tests fail rather than skip, since
a skip would report metrics as checked when nothing was.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eva_runtime import metrics as m
from eva_runtime.metrics import (
    BASE_LABELS,
    NullMetrics,
    StepMetrics,
    activate,
    current,
    delete_run_groups,
)
from prom_tools import (
    Server,
    free_port,
    get_json,
    launch_prometheus,
    launch_pushgateway,
    pushgateway_groups,
    query,
    series,
    wait_scraping,
    wait_until,
)

EXPECTED_NAMES = {
    "eva_prompts",
    "eva_prompts_done_total",
    "eva_generated_tokens_total",
    "eva_responses_scored_total",
    "eva_evolve_attempts_total",
    "eva_evolve_rejections_total",
    "eva_train_step",
    "eva_train_loss",
    "eva_train_learning_rate",
    "eva_step_start_time_seconds",
    "eva_step_duration_seconds",
    "eva_step_status",
}
PER_PROMPT_LABELS = {"prompt", "prompt_id", "prompt_text", "parent_id", "root_id"}


@dataclass
class Stack:
    prometheus: Server
    gateway: Server
    metrics_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Prometheus scraping a step's port (reserved before the step serves on it, so the
    config is static) and a Pushgateway, both scraped every second."""
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    with launch_pushgateway(workdir) as gateway:
        metrics_port = free_port()
        targets = {
            "eva-step": (f"127.0.0.1:{metrics_port}", False),
            # honor_labels: the pushed job/run/... labels stay as pushed, as in a real setup.
            "pushgateway": (gateway.url.removeprefix("http://"), True),
        }
        with launch_prometheus(workdir, targets) as prometheus:
            wait_scraping(prometheus, set(targets))
            yield Stack(prometheus=prometheus, gateway=gateway, metrics_port=metrics_port)


def _run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _value(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


# --- 1: Prometheus scrapes a serving step ----------------------------------------------------


def test_prometheus_scrapes_a_step_while_it_works(stack: Stack) -> None:
    run = _run_id("scrape")
    metrics = StepMetrics(run=run, namespace="ns-a", iteration=2, step="generate", shard=1)
    port = metrics.serve(stack.metrics_port, addr="127.0.0.1")
    assert port == stack.metrics_port
    metrics.step_started()
    metrics.add_prompts_total(40)
    done = threading.Event()

    def work() -> None:
        with activate(metrics):
            for _ in range(40):  # ~4 s of a step producing prompts and tokens
                current().prompts_done()
                current().tokens_generated(17)
                time.sleep(0.1)
        done.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        selector = f'eva_prompts_done_total{{run="{run}"}}'
        first = wait_until(
            lambda: _value(query(stack.prometheus, selector)), 15, f"a scraped sample of {selector}"
        )

        def risen() -> float | None:
            v = _value(query(stack.prometheus, selector))
            return v if v is not None and v > first else None

        second = wait_until(risen, 15, f"{selector} to rise above {first}")
        assert second > first
        # After the work ends, a later scrape sees every prompt and every token.
        assert done.wait(15)
        wait_until(lambda: _value(query(stack.prometheus, selector)) == 40, 10, f"{selector} == 40")
        tokens = _value(query(stack.prometheus, f'eva_generated_tokens_total{{run="{run}"}}'))
        assert tokens == 40 * 17
        rate = _value(query(stack.prometheus, f"increase({selector}[1m])"))
        assert rate is not None and rate > 0

        (sample,) = query(stack.prometheus, selector)
        assert sample["metric"] == {
            "__name__": "eva_prompts_done_total",
            "run": run,
            "namespace": "ns-a",
            "iteration": "2",
            "step": "generate",
            "shard": "1",
            "job": "eva-step",
            "instance": f"127.0.0.1:{port}",
        }
        step_series = series(stack.prometheus, f'{{run="{run}"}}')
        names = {s["__name__"] for s in step_series}
        assert {"eva_prompts", "eva_prompts_done_total", "eva_generated_tokens_total"} <= names
        for s in step_series:
            assert s["__name__"].startswith("eva_"), s
            assert set(BASE_LABELS) <= set(s), s
            assert not PER_PROMPT_LABELS & set(s), s
        # No per-prompt label anywhere in Prometheus, not just on this run's series.
        labels = get_json(f"{stack.prometheus.url}/api/v1/labels")["data"]
        assert not PER_PROMPT_LABELS & set(labels)
    finally:
        metrics.stop()
        worker.join(timeout=10)
    # stop() frees the port, so the next step of `eva run` can serve on it.
    after = StepMetrics(run=run, namespace="ns-a", iteration=2, step="create")
    assert after.serve(port, addr="127.0.0.1") == port
    after.stop()


# --- 2: Pushgateway: push at step end, delete at run end -------------------------------------


def _group(gateway: Server, key: dict[str, str]) -> dict | None:
    want = {"job": "eva", **key}
    for g in pushgateway_groups(gateway):
        if g["labels"] == want:
            return g
    return None


def test_push_then_delete_run_groups(stack: Stack) -> None:
    run, other = _run_id("push"), _run_id("other")
    shards = []
    for shard in (0, 1):
        s = StepMetrics(run=run, namespace="ns-b", iteration=0, step="generate", shard=shard)
        s.step_started()
        s.prompts_done(3 + shard)
        s.evolve_rejected("too_short", 2)
        s.step_finished("succeeded")
        s.push(stack.gateway.url.removeprefix("http://"))  # a bare host:port is accepted too
        shards.append(s)
    bystander = StepMetrics(run=other, namespace="ns-b", iteration=0, step="generate")
    bystander.prompts_done(1)
    bystander.push(stack.gateway.url)

    for shard in (0, 1):
        group = _group(stack.gateway, shards[shard].grouping_key)
        assert group is not None, f"shard {shard} group not in {pushgateway_groups(stack.gateway)}"
        (done,) = group["eva_prompts_done_total"]["metrics"]
        assert float(done["value"]) == 3 + shard
        (status,) = [
            x for x in group["eva_step_status"]["metrics"] if x["labels"]["status"] == "succeeded"
        ]
        assert float(status["value"]) == 1

    # Prometheus scraping the gateway sees both shards, labelled as pushed.
    selector = f'eva_prompts_done_total{{job="eva",run="{run}"}}'
    found = wait_until(
        lambda: len(r := query(stack.prometheus, selector)) == 2 and r, 10, f"2 series {selector}"
    )
    assert sorted(x["metric"]["shard"] for x in found) == ["0", "1"]

    groups = [(0, "generate", 0), (0, "generate", 1), (0, "generate", 2), (0, "train", 0)]
    deleted = delete_run_groups(stack.gateway.url, run=run, namespace="ns-b", groups=groups)
    assert deleted == 2  # shard 2 and train were never pushed
    assert _group(stack.gateway, shards[0].grouping_key) is None
    assert _group(stack.gateway, shards[1].grouping_key) is None
    assert _group(stack.gateway, bystander.grouping_key) is not None  # another run is untouched
    assert delete_run_groups(stack.gateway.url, run=run, namespace="ns-b", groups=groups) == 0


def test_monitoring_down_is_a_warning_not_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s = StepMetrics(run="r", namespace="ns", iteration=0, step="train")
    started = time.monotonic()
    s.push(dead)
    assert delete_run_groups(dead, run="r", namespace="ns", groups=[(0, "train", 0)]) == 0
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "push to" in err and "failed" in err
    assert "cannot delete" in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert s.serve(taken.getsockname()[1], addr="127.0.0.1") == 0
    assert "cannot serve" in capsys.readouterr().err
    s.stop()  # nothing served: a no-op


# --- 3: pure: names, labels, the null object, activate() -------------------------------------


def _exercised() -> StepMetrics:
    s = StepMetrics(run="r", namespace="ns", iteration=1, step="create")
    s.step_started()
    s.add_prompts_total(10)
    s.prompts_done(2)
    s.tokens_generated(5)
    s.responses_scored(4)
    s.evolve_attempts(8)
    for reason in m.REJECTION_REASONS:
        s.evolve_rejected(reason)
    s.train_progress(3, 0.5, 1e-6)
    s.step_finished("succeeded")
    return s


def test_names_and_labels_follow_the_conventions() -> None:
    s = _exercised()
    families = list(s.registry.collect())
    samples = [x for f in families for x in f.samples]
    exposed = {x.name for x in samples if not x.name.endswith("_created")}
    assert exposed == EXPECTED_NAMES
    for f in families:
        names = {x.name for x in f.samples if not x.name.endswith("_created")}
        assert all(n.startswith("eva_") for n in names), names
        if f.type == "counter":
            assert all(n.endswith("_total") for n in names), names
        else:
            assert not any(n.endswith("_total") for n in names), names
        for n in names:
            if "time" in n or "duration" in n:
                assert n.endswith("_seconds"), n
    for x in samples:
        assert {k: x.labels[k] for k in BASE_LABELS} == s.labels, x
        assert set(x.labels) - set(BASE_LABELS) <= {"reason", "status"}, x
    assert s.labels == {
        "run": "r",
        "namespace": "ns",
        "iteration": "1",
        "step": "create",
        "shard": "0",
    }
    rejections = {x.labels["reason"] for x in samples if x.name == "eva_evolve_rejections_total"}
    assert rejections == set(m.REJECTION_REASONS)
    s.evolve_rejected("a reason nobody planned for")  # bounded: counted as "other"
    assert (
        s.registry.get_sample_value("eva_evolve_rejections_total", {**s.labels, "reason": "other"})
        == 1
    )
    status = {x.labels["status"]: x.value for x in samples if x.name == "eva_step_status"}
    assert status == {"running": 0, "succeeded": 1}
    duration = s.registry.get_sample_value("eva_step_duration_seconds", s.labels)
    assert duration is not None and 0 <= duration < 5


def test_steps_in_one_process_do_not_collide() -> None:
    a, b = _exercised(), _exercised()  # same names and labels, separate registries
    a.prompts_done(1)
    assert a.registry.get_sample_value("eva_prompts_done_total", a.labels) == 3
    assert b.registry.get_sample_value("eva_prompts_done_total", b.labels) == 2


def test_train_progress_leaves_unlogged_values_unset() -> None:
    s = StepMetrics(run="r", namespace="ns", iteration=0, step="train")
    s.train_progress(1, None, None)
    assert s.registry.get_sample_value("eva_train_step", s.labels) == 1
    assert s.registry.get_sample_value("eva_train_loss", s.labels) is None
    assert s.registry.get_sample_value("eva_train_learning_rate", s.labels) is None


def test_serve_port_zero_then_stop() -> None:
    s = _exercised()
    port = s.serve(0, addr="127.0.0.1")
    assert port > 0
    assert s.serve(0, addr="127.0.0.1") == port  # serving twice is the same server
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert (
        'eva_prompts_done_total{iteration="1",namespace="ns",run="r",shard="0",step="create"} 2.0'
        in body
    )
    s.stop()
    s.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    again = StepMetrics(run="r", namespace="ns", iteration=2, step="create")
    assert again.serve(port, addr="127.0.0.1") == port  # the next step can take the port
    again.stop()


def test_null_metrics_has_every_method_and_accepts_every_call() -> None:
    public = {
        n: f
        for n, f in inspect.getmembers(StepMetrics, inspect.isfunction)
        if not n.startswith("_")
    }
    null = NullMetrics()
    for name, fn in public.items():
        assert inspect.signature(getattr(NullMetrics, name)) == inspect.signature(fn), name
    null.add_prompts_total(3)
    null.prompts_done()
    null.prompts_done(2)
    null.tokens_generated(5)
    null.responses_scored(1)
    null.evolve_attempts(2)
    null.evolve_rejected("duplicate")
    null.evolve_rejected("empty", 3)
    null.train_progress(1, None, None)
    null.train_progress(2, 0.1, 1e-5)
    null.step_started()
    null.step_finished("failed")
    assert null.serve(0) == 0
    null.stop()
    null.push("http://127.0.0.1:1")


def test_activate_restores_the_previous_current() -> None:
    assert isinstance(current(), NullMetrics)
    outer = StepMetrics(run="r", namespace="ns", iteration=0, step="generate")
    inner = StepMetrics(run="r", namespace="ns", iteration=0, step="create")
    with activate(outer) as got:
        assert got is outer and current() is outer
        seen: list[object] = []
        t = threading.Thread(target=lambda: seen.append(current()))
        t.start()
        t.join()
        assert seen == [outer]  # worker threads of a step report to it too
        with pytest.raises(RuntimeError), activate(inner):
            assert current() is inner
            raise RuntimeError("step failed")
        assert current() is outer
    assert isinstance(current(), NullMetrics)
