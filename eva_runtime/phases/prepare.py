"""prepare: read the prompt source once, give prompts ids, set the held-out prompts aside;
download every hub model the spec names, once, and record the commits (eva_runtime.hub)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from eva_runtime.artifacts import write_parquet
from eva_runtime.errors import InputError
from eva_runtime.phases.context import Context
from eva_runtime.progress import note
from eva_runtime.prompts import load_prompts
from eva_runtime.seeds import derive_seed


def run_prepare(ctx: Context) -> dict:
    sd = ctx.run_dir.prepare()
    if not sd.begin():
        return sd.summary()
    p = ctx.spec.prompts
    table = load_prompts(p.source, column=p.column, id_column=p.id_column, limit=p.limit)
    frame = table.frame()
    if p.held_out >= len(frame):
        raise InputError(
            f"spec.prompts.heldOut: {p.held_out} held-out prompts leave none to train on "
            f"({p.source} has {len(frame)} usable prompts)"
        )
    rng = np.random.default_rng(derive_seed(ctx.spec.seed, "heldout"))
    held = np.zeros(len(frame), dtype=bool)
    held[rng.choice(len(frame), size=p.held_out, replace=False)] = True
    lineage = {
        "parent_id": pd.Series([None] * len(frame), dtype="string"),
        "root_id": frame["prompt_id"],
        "method": "seed",
        "iteration": -1,
        "depth": 0,
        "origin": "source",
    }
    frame = frame.assign(**lineage)
    train, heldout = frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)
    write_parquet(sd.path / "train.parquet", train)
    write_parquet(sd.path / "heldout.parquet", heldout[["prompt_id", "prompt"]])
    counts = {
        "rows_read": table.rows_read,
        "prompts": len(train),
        "heldout": len(heldout),
        **{f"skipped_{k}": v for k, v in table.skipped.items()},
    }
    if table.skipped:
        note(f"prompts: skipped {table.skipped} of {table.rows_read} rows in {p.source}")
    from eva_runtime.hub import RECORD, download_models

    models = download_models(ctx.spec.model_refs(), sd.path / RECORD)
    counts["hub_models"] = len(models)
    counts["hub_models_downloaded"] = sum(bool(m["downloaded"]) for m in models.values())
    counts["hub_bytes_downloaded"] = sum(m["bytes_fetched"] for m in models.values())
    return sd.finish(
        counts, source=p.source, models={ref: m["commit"] for ref, m in models.items()}
    )
