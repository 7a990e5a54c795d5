"""The live miss-ratio curve (record/estimate.py): shadows of the real record code, sampled."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from foresync.nbd import trace
from foresync.record import estimate
from foresync.record.estimate import FACTORS, MissRatioEstimator, advice
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

PGBENCH = Path(__file__).parents[2] / "bench" / "workloads" / "pgbench.fstrace.xz"
ES = 65536


def test_estimates_follow_tune_on_a_captured_database_trace() -> None:
    """The primary's estimate at 0.5x and 2x its capacity is within 20% of what ``foresync
    tune``'s replay measures there, on the PostgreSQL trace of the suite."""
    size, records = trace.decode(lzma.decompress(PGBENCH.read_bytes()))
    writes = writes_of(records)
    capacity = 1024
    estimator = MissRatioEstimator(size, ES, capacity, Eviction.S3FIFO, 4, "next")
    assert estimator.shift > 0, "the record is big enough to be sampled"
    for at, offset, length, is_data in writes:
        estimator.observe(at, offset, length, is_data)
    actual = replay(writes, size, ReplayConfig(ES, capacity, Eviction.S3FIFO, 4)).miss_ratio
    estimates = estimator.estimates(actual)
    assert sorted(estimates) == [round(capacity * f) for f in FACTORS]
    for factor in (0.5, 2.0):
        c = round(capacity * factor)
        replayed = replay(writes, size, ReplayConfig(ES, c, Eviction.S3FIFO, 4)).miss_ratio
        assert estimates[c] == pytest.approx(replayed, rel=0.2), (c, estimates[c], replayed)
    assert estimates[512] > estimates[2048] > estimates[8192]


def test_unsampled_writes_cost_nothing_and_nothing_is_estimated_before_a_sample() -> None:
    estimator = MissRatioEstimator(1 << 30, ES, 4096, Eviction.LRU, 4, "next")
    assert estimator.estimates() == {}
    for region in range(64):
        estimator.observe(0.0, region * 64 * ES, 4096, True)
    assert 0 < estimator.sampled < 64  # a sample of the regions, not every one


@pytest.mark.parametrize("ratio, estimates, expected", [
    (None, {}, "no writes yet"),
    (0.3, {}, "30.0% of writes miss at capacity 1024: too small (no estimate"),
    (0.01, {}, "big enough (no estimate"),
    (0.02, {512: 0.04, 2048: 0.01}, "big enough (capacity 512 would too)"),
    (0.12, {512: 0.3, 2048: 0.07, 4096: 0.03, 8192: 0.01}, "too small; capacity 4096 (256 MiB"),
    (0.40, {512: 0.5, 2048: 0.35, 8192: 0.2}, "even capacity 8192 would miss 20.0%"),
])
def test_advice_says_in_one_line_whether_the_record_is_too_small(
        ratio: float | None, estimates: dict[int, float], expected: str) -> None:
    line = advice(1024, ES, ratio, estimates)
    assert expected in line and "\n" not in line


def test_a_hot_region_in_the_sample_halves_it_so_the_write_path_cost_stays_bounded() -> None:
    estimator = MissRatioEstimator(1 << 30, ES, 4096, Eviction.S3FIFO, 4, "next")
    shift = estimator.shift
    region_bytes = 64 * ES
    hot = next(r for r in range(1024)
               if (((r + estimate._SALT) * estimate._GOLDEN) & 0xFFFFFFFF) < (1 << 32) >> shift)
    for i in range(estimate.CHECK_EVERY + 1):
        estimator.observe(i * 1e-4, hot * region_bytes + (i % 64) * ES, 4096, True)
    assert estimator.shift == shift + 1  # every write was fed: more than 1 in FED_MAX_RATIO
    assert estimator.sampled <= 1  # fresh shadows at the new rate
