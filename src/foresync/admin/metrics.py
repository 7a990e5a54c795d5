"""Prometheus metrics for `GET /metrics` (prometheus-client, text format 0.0.4).

Everything but the write-latency histogram is read from the site's ``/status`` document when
Prometheus scrapes, so the write path pays nothing for it. The histogram is observed once per
host write, so it is our own: a bisect and two additions, where prometheus-client's Histogram
takes a lock per bucket and sum (about 2 us, a tenth of a replicated write's CPU at zero RTT).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

StatusFn = Callable[[], dict[str, Any]]

LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0, 2.5)


LABELS = ["volume", "site"]  # site: the config file's name without .toml (a@.service's instance)


class _StatusCollector(Collector):
    def __init__(self, volume: str, status: StatusFn, site: str = "") -> None:
        self._volume = volume
        self._site = site
        self._status = status

    def collect(self) -> Iterator[Metric]:
        doc = self._status()
        counters, record, lag = doc["counters"], doc["record"], doc.get("lag", {})
        resync = doc.get("resync", {})
        extent = record["extent_size_bytes"]
        labels = [self._volume, self._site]

        def counter(name: str, text: str, value: float) -> Metric:
            family = CounterMetricFamily(name, text, labels=LABELS)
            family.add_metric(labels, value)
            return family

        def gauge(name: str, text: str, value: float) -> Metric:
            family = GaugeMetricFamily(name, text, labels=LABELS)
            family.add_metric(labels, value)
            return family

        yield counter("foresync_writes", "Host writes (and zero/trim) received.", counters["writes"])
        yield counter("foresync_record_hits", "Writes inside the record (answered locally).",
                      counters["record_hits"])
        yield counter("foresync_record_misses", "Writes outside the record (one round trip).",
                      counters["record_misses"])
        yield counter("foresync_record_read_aheads", "Sequential hits that also asked the secondary "
                      "to record the next extents.", counters.get("record_read_aheads", 0))
        yield counter("foresync_resync_bytes", "Bytes this site sent as resync source.",
                      counters["resync_bytes"])
        yield counter("foresync_storage_errors", "Writes to this site's own image or metadata that "
                      "failed (a full disk, an I/O error).", counters.get("storage_errors", 0))
        yield counter("foresync_secondary_storage_errors", "Times the secondary reported it could "
                      "not write (STORAGE_FAILED) and dropped the link.",
                      counters.get("secondary_storage_errors", 0))
        yield gauge("foresync_secondary_storage_failed", "1 from a STORAGE_FAILED report until a "
                    "resync pass completes on the secondary again.",
                    1 if doc.get("secondary_error") else 0)
        yield gauge("foresync_record_extents", "Extents in the record.", record["extents"])
        yield gauge("foresync_record_capacity_extents", "Most extents the record may hold.",
                    record["capacity"])
        estimate = GaugeMetricFamily("foresync_record_miss_ratio_estimate",
                                     "Miss ratio the record would have at this capacity (extents), "
                                     "estimated live from sampled writes.", labels=["volume", "capacity"])
        for capacity, ratio in record.get("miss_ratio_estimate", {}).items():
            estimate.add_metric([self._volume, str(capacity)], ratio)
        yield estimate
        bound = doc.get("failback_bound_bytes", record["extents"] * extent)
        yield gauge("foresync_failback_bound_bytes",
                    "Most bytes a failback would copy now (record plus out-of-sync extents).", bound)
        yield gauge("foresync_replication_lag_bytes", "Bytes written here the secondary has not "
                    "applied yet.", lag.get("bytes", 0))
        yield gauge("foresync_replication_lag_seconds", "Age of the oldest write the secondary "
                    "has not applied yet.", lag.get("seconds", 0.0))
        yield gauge("foresync_link_up", "1 when the replication link is connected.",
                    1 if doc["link"] == "connected" else 0)
        yield gauge("foresync_link_rtt_seconds", "Round trip of the last link heartbeat.",
                    doc.get("link_rtt_s", 0.0))
        yield gauge("foresync_resync_remaining_bytes", "Bytes the running resync still has to "
                    "compare or copy.", resync.get("remaining_bytes", 0))
        yield gauge("foresync_in_sync", "1 when nothing is queued, unacknowledged or pending resync.",
                    1 if doc.get("in_sync") else 0)
        yield from self._state(doc, labels, gauge)

    @staticmethod
    def _state(doc: dict[str, Any], labels: list[str],
               gauge: Callable[[str, str, float], Metric]) -> Iterator[Metric]:
        """Issue 17: role, epoch, consistency, split brain, out-of-sync, NBD, verify and the
        resync phases, so that a dashboard or an alert needs no /status scrape."""
        role = GaugeMetricFamily("foresync_role", "1 for the role this site has now (label role).",
                                 labels=[*LABELS, "role"])
        for name in ("primary", "secondary"):
            role.add_metric([*labels, name], 1 if doc["role"] == name else 0)
        yield role
        extent = doc["record"]["extent_size_bytes"]
        oos = doc.get("out_of_sync_extents", 0)
        verify, resync = doc.get("verify") or {}, doc.get("resync") or {}
        yield gauge("foresync_epoch", "Epoch (promotions so far) of this site.", doc["epoch"])
        yield gauge("foresync_consistent", "1 when this site's copy is a usable image (a secondary "
                    "is not during a full sync or resync into it).", 1 if doc.get("consistent", True) else 0)
        yield gauge("foresync_split_brain", "1 when both sites were primary with diverged histories.",
                    1 if doc.get("split_brain") else 0)
        yield gauge("foresync_out_of_sync_extents", "Extents the secondary may lack outside its "
                    "record (copied when the link returns).", oos)
        yield gauge("foresync_out_of_sync_bytes", "Bytes of those extents.", oos * extent)
        yield gauge("foresync_nbd_connections", "NBD client connections now.",
                    (doc.get("nbd") or {}).get("connections", 0))
        yield gauge("foresync_verify_active", "1 while an online verify runs.",
                    1 if verify.get("active") else 0)
        yield gauge("foresync_verify_mismatches", "Extents the running or last verify found "
                    "different.", verify.get("mismatches", 0))
        yield gauge("foresync_resync_active", "1 while a resync pass runs (or this secondary "
                    "waits for one to finish).", 1 if resync.get("active") else 0)
        total = GaugeMetricFamily("foresync_resync_total_bytes", "Bytes of the current (or last) "
                                  "resync pass, by phase: compare (checksums), send (known so far).",
                                  labels=[*LABELS, "phase"])
        done = GaugeMetricFamily("foresync_resync_done_bytes", "Bytes of the current (or last) "
                                 "resync pass done, by phase.", labels=[*LABELS, "phase"])
        for phase in ("compare", "send"):
            total.add_metric([*labels, phase], resync.get(f"{phase}_total_bytes", 0))
            done.add_metric([*labels, phase], resync.get(f"{phase}_done_bytes", 0))
        yield total
        yield done
        yield gauge("foresync_resync_received_bytes", "Resync bytes this secondary received in the "
                    "current (or last) pass.", resync.get("received_bytes", 0))


class LatencyHistogram(Collector):
    """``foresync_write_latency_seconds``: observed from the event loop only, exported as a
    Prometheus histogram (cumulative ``le`` buckets, ``_sum``, ``_count``) when scraped."""

    NAME = "foresync_write_latency_seconds"
    HELP = "Latency of host writes, zeroes, trims and flushes, from request to answer."

    def __init__(self, volume: str, bounds: tuple[float, ...] = LATENCY_BUCKETS_S,
                 site: str = "") -> None:
        self._volume = volume
        self._site = site
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf only)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # le: a value equal to a bound is in it
        self._sum += seconds

    def collect(self) -> Iterator[Metric]:
        counts, total = list(self._counts), self._sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self._bounds, counts, strict=False):
            running += count
            buckets.append((repr(bound), running))
        buckets.append(("+Inf", running + counts[-1]))
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=LABELS)
        family.add_metric([self._volume, self._site], buckets, total)
        yield family


class SiteMetrics:
    def __init__(self, volume: str, status: StatusFn, site: str = "") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(volume, status, site))
        self.write_latency = LatencyHistogram(volume, site=site)
        self.registry.register(self.write_latency)
        # The standard process_* series (CPU, memory, open fds, start time) from /proc.
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
