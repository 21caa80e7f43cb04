"""The operator's Prometheus metrics (prefix ``eva_operator_``), one registry per operator.

Per-run series carry ``namespace`` and ``run`` labels and are removed when the run is
deleted, so a busy cluster does not accumulate dead series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from eva_operator.conditions import PHASES
from eva_operator.plan import STEP_STAGES
from eva_runtime.api import LABEL_SWEEP, LABEL_SWEEP_CELL
from eva_runtime.spec import ITERATION_STEPS

STEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge(
            "eva_operator_runs", "EvaRuns known to the operator, by phase", ["phase"], registry=r
        )
        self.iteration = Gauge(
            "eva_operator_run_iteration",
            "Current iteration of each EvaRun",
            ["namespace", "run"],
            registry=r,
        )
        self.run_phase = Gauge(
            "eva_operator_run_phase",
            "1 for each EvaRun's current phase, 0 for the others",
            ["namespace", "run", "phase"],
            registry=r,
        )
        self.step_duration = Histogram(
            "eva_operator_step_duration_seconds",
            "Wall time of each completed step, from Job creation to completion",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_stage = Histogram(
            "eva_operator_step_stage_seconds",
            "Each completed step's time by stage: queued (Job created to pod scheduled), "
            "startup (scheduled to container started), running (container start to end)",
            ["step", "stage"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.jobs_created = Counter(
            "eva_operator_jobs_created_total", "Step Jobs created", ["step"], registry=r
        )
        self.jobs_failed = Counter(
            "eva_operator_jobs_failed_total",
            "Step Jobs that failed, by reason",
            ["step", "reason"],
            registry=r,
        )
        self.reconcile = Histogram(
            "eva_operator_reconcile_duration_seconds",
            "Time to plan and apply one reconciliation of one EvaRun",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "eva_operator_reconcile_errors_total",
            "Reconciliations that raised (retried with backoff)",
            registry=r,
        )
        self.status_conflicts = Counter(
            "eva_operator_status_conflicts_total",
            "Status writes refused with 409 because the run changed since it was read "
            "(planned again at once)",
            registry=r,
        )
        self.reward = Gauge(
            "eva_operator_run_heldout_reward",
            "Held-out reward of each EvaRun's newest policy",
            ["namespace", "run"],
            registry=r,
        )
        self.win_rate = Gauge(
            "eva_operator_run_win_rate",
            "Held-out win rate of each EvaRun's newest policy over the previous one",
            ["namespace", "run"],
            registry=r,
        )
        self.run_info = Gauge(
            "eva_operator_run_info",
            "1 for each EvaRun, with the sweep and cell it belongs to (labels eva.dev/sweep and "
            "eva.dev/sweep-cell, empty when not part of a sweep)",
            ["namespace", "run", "sweep", "cell"],
            registry=r,
        )
        self._info: dict[tuple[str, str], tuple[str, str]] = {}
        self._phases: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            self.runs.labels(phase).set(0)
        # Every step's series exist from the start, so rate() and increase() see the first
        # observation of each step.
        for step in ("prepare", *ITERATION_STEPS):
            self.step_duration.labels(step)
            self.jobs_created.labels(step)
            for stage in STEP_STAGES:
                self.step_stage.labels(step, stage)

    def observe_run(self, namespace: str, name: str, status: dict) -> None:
        phase = status.get("phase")
        if phase:
            self._phases[(namespace, name)] = phase
            for p in PHASES:
                self.run_phase.labels(namespace, name, p).set(1 if p == phase else 0)
        if status.get("iteration") is not None:
            self.iteration.labels(namespace, name).set(status["iteration"])
        if status.get("reward") is not None:
            self.reward.labels(namespace, name).set(status["reward"])
        if status.get("winRate") is not None:
            self.win_rate.labels(namespace, name).set(status["winRate"])
        self._count()

    def observe_labels(self, namespace: str, name: str, labels: dict) -> None:
        """The run's info series, from its labels (replaced when they change)."""
        info = (str(labels.get(LABEL_SWEEP) or ""), str(labels.get(LABEL_SWEEP_CELL) or ""))
        old = self._info.get((namespace, name))
        if old == info:
            return
        if old is not None:
            with contextlib.suppress(KeyError):
                self.run_info.remove(namespace, name, *old)
        self._info[(namespace, name)] = info
        self.run_info.labels(namespace, name, *info).set(1)

    def forget_run(self, namespace: str, name: str) -> None:
        self._phases.pop((namespace, name), None)
        info = self._info.pop((namespace, name), None)
        if info is not None:
            with contextlib.suppress(KeyError):
                self.run_info.remove(namespace, name, *info)
        for gauge in (self.iteration, self.reward, self.win_rate):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        for p in PHASES:
            with contextlib.suppress(KeyError):
                self.run_phase.remove(namespace, name, p)
        self._count()

    def _count(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.runs.labels(phase).set(n)
