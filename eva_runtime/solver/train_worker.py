"""Entry point that ``accelerate launch`` runs in every training process.

Kept apart from :mod:`eva_runtime.solver.train` so that the module the launcher executes
is never also imported under its package name (``python -m`` on a module that is
imported elsewhere gives two copies of it). The job arrives as a JSON file rather than
command-line flags because the pairs can be large and the settings nested.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from eva_runtime.solver.launch import LOG_MARKER
from eva_runtime.solver.settings import settings_from_dict
from eva_runtime.solver.trainer import train_in_this_process


def _emit(record: dict) -> None:
    """Hand a log record to the parent, which reads this process's stdout line by line."""
    print(LOG_MARKER + json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m eva_runtime.solver.train_worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    records = [
        json.loads(line) for line in Path(job["pairs_file"]).read_text().splitlines() if line
    ]
    result = train_in_this_process(
        records,
        model_path=job["model_path"],
        output_dir=job["output_dir"],
        settings=settings_from_dict(job["settings"]),
        on_log=_emit,
        dataset_dir=job.get("dataset_dir"),
    )
    # Only the main rank reports; the others only took part in the collectives.
    if int(os.environ.get("RANK", "0")) == 0:
        result_file = Path(job["result_file"])
        staging = result_file.with_name(result_file.name + ".tmp")
        staging.write_text(json.dumps(dataclasses.asdict(result)))
        staging.replace(result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
