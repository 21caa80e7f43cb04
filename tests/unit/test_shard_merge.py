"""A sharded generation step's summary, merged from its shards: the same numbers whether the
last shard writes it (``finalize_sharded``) or the operator reads the shards' messages."""

from __future__ import annotations

import math

import pytest

from eva_runtime.artifacts import RunDir
from eva_runtime.phases.context import finalize_sharded, merged_timings
from eva_runtime.status import ADDITIVE_COUNTS, merge_shard_counts

A = {
    "prompts": 3,
    "responses": 6,
    "tokens": 60,
    "truncated": 1,
    "reward_mean": 0.2,
    "reward_max": 1.0,
    "reward_min": -0.5,
    "reward_gap_mean": 0.4,
}
B = {
    "prompts": 1,
    "responses": 2,
    "tokens": 9,
    "truncated": 0,
    "reward_mean": 0.8,
    "reward_max": 2.0,
    "reward_min": 0.1,
    "reward_gap_mean": 1.0,
}
EMPTY = {"prompts": 0, "responses": 0, "tokens": 0, "truncated": 0, "reward_mean": 0.0}


def test_counts_add_extremes_merge_and_means_are_weighted():
    merged = merge_shard_counts([A, B, EMPTY])
    assert {k: merged[k] for k in ADDITIVE_COUNTS} == {
        "prompts": 4,
        "responses": 8,
        "tokens": 69,
        "truncated": 1,
    }
    assert merged["reward_max"] == 2.0
    assert merged["reward_min"] == -0.5  # the empty shard's 0.0 is not a reward
    assert merged["reward_mean"] == pytest.approx((0.2 * 6 + 0.8 * 2) / 8)
    assert merged["reward_gap_mean"] == pytest.approx((0.4 * 3 + 1.0 * 1) / 4)


def test_one_shard_is_its_own_merge():
    assert merge_shard_counts([A]) == pytest.approx(A)


def test_values_that_are_not_finite_numbers_are_left_out():
    hostile = {"prompts": "3", "responses": 2, "tokens": math.nan, "truncated": True, "x": [1]}
    merged = merge_shard_counts([hostile, B])
    assert merged["prompts"] == 1
    assert merged["responses"] == 4
    assert merged["tokens"] == 9
    assert merged["truncated"] == 0
    assert "x" not in merged


def test_no_shard_with_responses_gives_zero_counts_and_no_means():
    assert merge_shard_counts([EMPTY, {}]) == dict.fromkeys(ADDITIVE_COUNTS, 0)


def test_timings_add_up_and_parts_fill_the_total():
    a = {"seconds": 10.0, "phases": {"load": 4.0, "generate": 5.0}, "loads": 1}
    b = {"seconds": 6.0, "phases": {"load": 1.0, "generate": 4.0}, "loads": 2}
    merged = merged_timings([a, b])
    assert merged["seconds"] == 16.0
    assert merged["loads"] == 3
    assert merged["phases"]["load"] == pytest.approx(5.0)
    assert merged["phases"]["generate"] == pytest.approx(9.0)
    assert sum(merged["phases"].values()) == pytest.approx(16.0)


def test_the_last_shard_writes_the_merged_marker(tmp_path):
    rd = RunDir(tmp_path)
    assert finalize_sharded(rd, 0, "generate", 2) is None  # no shard complete yet
    for i, counts in enumerate((A, B)):
        sd = rd.shard(0, "generate", i, 2)
        assert sd.begin()
        (sd.path / "rollouts.parquet").write_bytes(b"shard %d" % i)
        sd.finish(counts, shard=i, num_shards=2)
        if i == 0:
            assert finalize_sharded(rd, 0, "generate", 2) is None
    summary = finalize_sharded(rd, 0, "generate", 2)
    assert summary is not None
    assert summary["counts"] == merge_shard_counts([A, B])
    assert sorted(summary["digests"]) == [
        "shard-00000-of-00002/rollouts.parquet",
        "shard-00001-of-00002/rollouts.parquet",
    ]
    assert rd.step(0, "generate").complete()
    assert rd.step(0, "generate").summary()["num_shards"] == 2
