"""MLflow tracking of an eva run, fed from the run directory after each step.

Why the run directory drives tracking: every complete step already has a ``_SUCCESS.json``
with its counts and the sha256 of each file, so MLflow only mirrors what the run directory
holds and never becomes a second source of truth. ``Tracker.sync()`` logs every complete
step that MLflow has not had yet, so it works the same after one step (a Kubernetes pod
running ``eva phase``), at the end of ``eva run``, or days later (``eva track RUN_DIR``).

**MLflow unreachable: the run directory is the buffer.** Training must not stop or stall
because a tracking server is down, and nothing may be lost silently. So ``sync()`` gives
MLflow a short leash (unless the user set them, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``,
``..._BACKOFF_FACTOR=1``, ``..._BACKOFF_JITTER=0.5`` and ``..._TIMEOUT=10`` for the duration
of the call: a refused connection fails in about a second, a black-holed one in about 20 s,
instead of MLflow's default of minutes of retries) and raises ``TrackingUnavailable``, naming
the tracking URI. A step is marked as logged only after all of it reached MLflow, so the
next ``sync()`` (the next step, a resumed run, or ``eva track``) logs everything still
missing. Metric timestamps come from the step's own timings, so a step that is sent again
after a failure half-way repeats exactly the same points and MLflow's stores drop them as
duplicates instead of doubling the curves.

**Resume.** The MLflow ids (experiment, parent run, one nested run per iteration, model
versions) and the set of steps already logged live in ``<run_dir>/tracking.json``, written
atomically, keyed by tracking URI (credentials removed), so a resumed ``eva run`` or another
pod continues the same MLflow runs, and the same run directory can also be sent to a second
server. An advisory lock (``<run_dir>/.tracking.lock``) keeps two processes from creating the
same runs twice.

**What is logged, and where.**

* Experiment ``spec.tracking.mlflow.experiment``, default ``<namespace>/<name>``; one parent
  run per EvaRun (tags ``eva.name``, ``eva.namespace``, ``eva.uid``, ``eva.run_dir``); its
  params are the flattened spec in the manifest's spelling (``creator.sampleFraction``),
  except ``iterations``, which a run may raise later and MLflow params cannot change: it is
  the tag ``eva.iterations``.
* One nested run per iteration (``mlflow.parentRunId``, tag ``eva.iteration``). Each numeric
  count of a step's ``_SUCCESS.json`` becomes the metric ``<step>/<count>`` at
  ``step=iteration`` (``generate/reward_mean``, ``create/informativeness_q50``,
  ``create/dropped_too_short``, ``train/pairs``, ``evaluate/win_rate``); the training history
  becomes ``train/<column>`` at ``step=<training step>`` (``train/loss``,
  ``train/rewards/accuracies``: TRL's own names, '/' is valid in MLflow metric names).
* The parent gets curves over iterations (``step=iteration``): ``reward_mean``,
  ``reward_gap_mean``, ``prompts_selected``, ``prompts_evolved``, ``pairs``, ``train_loss``,
  ``reward_accuracy``, ``heldout_reward`` (the new policy's), ``win_rate``, and once
  ``heldout_reward_base`` (the starting policy's).
* Prompt sets are dataset inputs: ``initial``, ``heldout``, ``evolved-iter-<t>``,
  ``mixed-iter-<t>`` and the preference pairs ``pairs-iter-<t>``, with the parquet file's URI
  as source. MLflow caps a dataset digest at 36 characters, so the digest is the first 36 hex
  digits of the file's sha256 (from ``_SUCCESS.json``); the full sha256 is in the dataset's
  profile (``sha256``) and in the input tag ``eva.sha256``.
* Each iteration's policy is a new version of the registered model ``<namespace>-<name>``
  (registry names cannot hold '/'), with the model folder itself as source: weights are never
  copied. Aliases ``iter-<t>`` and ``newest`` (MLflow reserves ``latest``; ``models:/<name>/
  latest`` already means the highest version). Version tags give the URIs and sha256 of the
  prompts and pairs that trained it (``eva.pairs_uri``, ``eva.pairs_sha256``, ``eva.evolved_*``,
  ``eva.mixed_*``, ``eva.prompts_*``), so a version leads back to its data.

**Model sources on a tracking server.** An MLflow server accepts a local folder as a model
version source only inside the artifact directory of the run named with it (a guard against
registering arbitrary server paths). When the iteration run's artifact directory is a local
path that this process can write (the server and the run directory share a filesystem), the
tracker makes that directory a symbolic link to the model folder, so the folder is the run's
artifacts and the server accepts it; nothing else is ever written there, and MLflow's garbage
collection refuses to delete through a link. When that is impossible (the server keeps
artifacts elsewhere) the version is not registered: a warning says why and the iteration run
keeps the tag ``eva.model_uri``. The embedded sqlite store has no such guard.
"""

from eva_runtime.tracking.names import (
    TrackingUnavailable,
    experiment_name,
    registered_model_name,
    tracking_uri,
)
from eva_runtime.tracking.tracker import STATE_FILE, Tracker

__all__ = [
    "STATE_FILE",
    "Tracker",
    "TrackingUnavailable",
    "experiment_name",
    "registered_model_name",
    "tracking_uri",
]
