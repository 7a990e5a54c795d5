"""The write-latency histogram the primary observes per host write (admin/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from foresync.admin.metrics import LatencyHistogram


def _samples(histogram: LatencyHistogram) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == LatencyHistogram.NAME]
    assert family.type == "histogram"
    return {(s.name, s.labels.get("le", "")): s.value for s in family.samples
            if s.labels["volume"] == "vol7"}


def test_buckets_are_cumulative_inclusive_and_end_with_the_count() -> None:
    histogram = LatencyHistogram("vol7")
    for seconds in (0.00001, 0.00005, 0.0003, 0.0003, 0.7, 3.0):
        histogram.observe(seconds)
    samples = _samples(histogram)
    bucket = "foresync_write_latency_seconds_bucket"
    assert samples[(bucket, "5e-05")] == 2  # a value equal to a bound is counted in it (le)
    assert samples[(bucket, "0.0001")] == 2
    assert samples[(bucket, "0.0005")] == 4
    assert samples[(bucket, "0.5")] == 4
    assert samples[(bucket, "1.0")] == 5
    assert samples[(bucket, "2.5")] == 5
    assert samples[(bucket, "+Inf")] == 6
    assert samples[("foresync_write_latency_seconds_count", "")] == 6
    assert abs(samples[("foresync_write_latency_seconds_sum", "")] - 3.70066) < 1e-9


def test_an_idle_histogram_exports_zeroes() -> None:
    samples = _samples(LatencyHistogram("vol7"))
    assert samples[("foresync_write_latency_seconds_count", "")] == 0
    assert samples[("foresync_write_latency_seconds_bucket", "+Inf")] == 0
