"""The EvaRun API's names, shared by the runtime, the CRD generator and the operator.

One definition of each: the API identity, the labels the operator puts on step Jobs and pods
(dashboards, alerts and the PodMonitor select by them), and the run phases. Light: importing
it loads nothing but the standard library.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "eva.dev"
VERSION: Final = "v1alpha1"
KIND: Final = "EvaRun"
PLURAL: Final = "evaruns"
SINGULAR: Final = "evarun"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Labels of every step Job and its pods.
LABEL_RUN: Final = f"{GROUP}/run"
LABEL_ITERATION: Final = f"{GROUP}/iteration"
LABEL_STEP: Final = f"{GROUP}/step"
LABEL_ATTEMPT: Final = f"{GROUP}/attempt"

# Labels `eva sweep --emit` puts on each EvaRun of a sweep (the operator exports them in
# eva_operator_run_info, so dashboards can pick a sweep's runs).
LABEL_SWEEP: Final = f"{GROUP}/sweep"
LABEL_SWEEP_CELL: Final = f"{GROUP}/sweep-cell"
LABEL_SEED: Final = f"{GROUP}/seed"
ANNOTATION_SWEEP_OVERRIDES: Final = f"{GROUP}/sweep-overrides"

# Run phases (status.phase).
PENDING: Final = "Pending"  # accepted, no step started yet
RUNNING: Final = "Running"  # a step Job exists or is about to
SUCCEEDED: Final = "Succeeded"  # every step of every iteration complete
FAILED: Final = "Failed"  # terminal: see reason / message
SUSPENDED: Final = "Suspended"  # runPolicy.suspend is true; the running step's Job was stopped
PHASES: Final = (PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL: Final = (SUCCEEDED, FAILED)
