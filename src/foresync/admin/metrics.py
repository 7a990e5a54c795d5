"""Prometheus metrics for `GET /metrics` (prometheus-client, text format 0.0.4).

Everything but the write-latency histogram is read from a ``SiteStatistics`` snapshot (the one
``/status`` is made from, ``admin/status.py``) when Prometheus scrapes, so the write path pays
nothing for it. The histogram is observed once per
host write, so it is our own: a bisect and two additions, where prometheus-client's Histogram
takes a lock per bucket and sum (about 2 us, a tenth of a replicated write's CPU at zero RTT).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from foresync.admin.status import PrimaryView, SecondaryView, SiteStatistics

StatisticsFn = Callable[[], SiteStatistics]

LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0, 2.5)


LABELS = ["volume", "site"]  # site: the config file's name without .toml (a@.service's instance)


class _StatusCollector(Collector):
    def __init__(self, volume: str, statistics: StatisticsFn, site: str = "") -> None:
        self._volume = volume
        self._site = site
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        s = self._statistics()
        # What only one role knows is 0 on the other: every site exports every series.
        p = s.view if isinstance(s.view, PrimaryView) else None
        v = s.view if isinstance(s.view, SecondaryView) else None
        labels = [self._volume, self._site]

        def counter(name: str, text: str, value: float) -> Metric:
            family = CounterMetricFamily(name, text, labels=LABELS)
            family.add_metric(labels, value)
            return family

        def gauge(name: str, text: str, value: float) -> Metric:
            family = GaugeMetricFamily(name, text, labels=LABELS)
            family.add_metric(labels, value)
            return family

        yield counter("foresync_writes", "Host writes (and zero/trim) received.", s.writes)
        yield counter("foresync_record_hits", "Writes inside the record (answered locally).",
                      p.core.record_hits if p else 0)
        yield counter("foresync_record_misses", "Writes outside the record (one round trip).",
                      p.core.record_misses if p else 0)
        yield counter("foresync_record_read_aheads", "Sequential hits that also asked the secondary "
                      "to record the next extents.", p.core.record_read_aheads if p else 0)
        yield counter("foresync_record_room_waits", "Misses that found no free or clean slot and "
                      "waited for the durable watermark.", p.core.record_room_waits if p else 0)
        yield counter("foresync_record_add_waits", "Writes that waited for a miss in flight to add "
                      "their extents, then went as hits.", p.core.record_add_waits if p else 0)
        yield counter("foresync_record_writes_behind_add", "Hits that waited for the ADDED of "
                      "another miss in flight to add their extents (counted in record_hits).",
                      p.core.record_writes_behind_add if p else 0)
        yield counter("foresync_record_misses_answered", "Misses whose ADDED came back (the count "
                      "of the miss timing sums).", p.core.record_misses_answered if p else 0)
        yield counter("foresync_record_miss_round_trip_seconds", "Seconds from each miss's MISS "
                      "to its ADDED, summed.", p.core.record_miss_round_trip_s if p else 0.0)
        yield counter("foresync_record_miss_queued_seconds", "Seconds from each miss's arrival "
                      "to its MISS (room, earlier ops on its extents, the window), summed.",
                      p.core.record_miss_queued_s if p else 0.0)
        yield counter("foresync_record_behind_add_waited_seconds", "Seconds the writes behind "
                      "another miss's ADD waited for it, summed.",
                      p.core.record_behind_add_waited_s if p else 0.0)
        yield counter("foresync_journal_commits", "Group commits of the secondary's record "
                      "journal (one fdatasync each).", v.core.journal_commits if v else 0)
        yield counter("foresync_secondary_misses_received", "MISS writes the secondary received "
                      "(each journals its additions).", v.core.misses_received if v else 0)
        yield counter("foresync_secondary_misses_added", "ADDEDs the secondary sent for the MISS "
                      "writes and zeroes it read.", v.misses_added if v else 0)
        yield counter("foresync_secondary_miss_added_seconds", "Seconds from reading each MISS "
                      "to sending its ADDED (the secondary's share of a miss's trip), summed.",
                      v.miss_added_s if v else 0.0)
        yield counter("foresync_record_evicted_ahead", "Clean extents evicted ahead of need to keep "
                      "free slots ready.", p.core.record_evicted_ahead if p else 0)
        yield counter("foresync_resync_bytes", "Bytes this site sent as resync source.",
                      p.core.resync_bytes if p else 0)
        yield counter("foresync_storage_errors", "Writes to this site's own image or metadata that "
                      "failed (a full disk, an I/O error).", s.storage_errors)
        yield counter("foresync_secondary_storage_errors", "Times the secondary reported it could "
                      "not write (STORAGE_FAILED) and dropped the link.",
                      p.core.secondary_storage_errors if p else 0)
        yield gauge("foresync_secondary_storage_failed", "1 from a STORAGE_FAILED report until a "
                    "resync pass completes on the secondary again.",
                    1 if p and p.secondary_error else 0)
        yield gauge("foresync_record_extents", "Extents in the record.", s.record_extents)
        yield gauge("foresync_record_capacity_extents", "Most extents the record may hold.",
                    s.record_capacity)
        estimate = GaugeMetricFamily("foresync_record_miss_ratio_estimate",
                                     "Miss ratio the record would have at this capacity (extents), "
                                     "estimated live from sampled writes.", labels=[*LABELS, "capacity"])
        for capacity, ratio in p.miss_ratio_estimate if p else ():
            estimate.add_metric([*labels, str(capacity)], round(ratio, 5))
        yield estimate
        bound = p.failback_bound_bytes if p else s.record_extents * s.extent_size_bytes
        yield gauge("foresync_failback_bound_bytes",
                    "Most bytes a failback would copy now (record plus out-of-sync extents).", bound)
        yield gauge("foresync_replication_lag_bytes", "Bytes written here the secondary has not "
                    "applied yet.", p.core.lag_bytes if p else 0)
        yield gauge("foresync_replication_lag_seconds", "Age of the oldest write the secondary "
                    "has not applied yet.", round(p.lag_seconds, 3) if p else 0.0)
        yield gauge("foresync_link_up", "1 when the replication link is connected.",
                    1 if s.link == "connected" else 0)
        yield gauge("foresync_link_rtt_seconds", "Round trip of the last link heartbeat.",
                    round(p.link_rtt_s, 6) if p else 0.0)
        yield gauge("foresync_resync_remaining_bytes", "Bytes the running resync still has to "
                    "compare or copy.", p.resync.remaining_bytes if p else
                    v.resync.progress.remaining_bytes if v else 0)
        yield gauge("foresync_in_sync", "1 when nothing is queued, unacknowledged or pending resync.",
                    1 if s.in_sync else 0)
        yield from self._state(s, p, v, labels, gauge)

    @staticmethod
    def _state(s: SiteStatistics, p: PrimaryView | None, v: SecondaryView | None,
               labels: list[str], gauge: Callable[[str, str, float], Metric]) -> Iterator[Metric]:
        """Issue 17: role, epoch, consistency, split brain, out-of-sync, NBD, verify and the
        resync phases, so that a dashboard or an alert needs no /status scrape."""
        role = GaugeMetricFamily("foresync_role", "1 for the role this site has now (label role).",
                                 labels=[*LABELS, "role"])
        for name in ("primary", "secondary"):
            role.add_metric([*labels, name], 1 if s.role == name else 0)
        yield role
        oos = p.core.out_of_sync_extents if p else 0
        yield gauge("foresync_epoch", "Epoch (promotions so far) of this site.", s.epoch)
        yield gauge("foresync_consistent", "1 when this site's copy is a usable image (a secondary "
                    "is not during a full sync or resync into it).", 0 if v and not v.consistent else 1)
        yield gauge("foresync_split_brain", "1 when both sites were primary with diverged histories.",
                    1 if s.split_brain else 0)
        yield gauge("foresync_out_of_sync_extents", "Extents the secondary may lack outside its "
                    "record (copied when the link returns).", oos)
        yield gauge("foresync_out_of_sync_bytes", "Bytes of those extents.", oos * s.extent_size_bytes)
        yield gauge("foresync_nbd_connections", "NBD client connections now.",
                    p.nbd_connections if p else 0)
        yield gauge("foresync_verify_active", "1 while an online verify runs.",
                    1 if p and p.verify.active else 0)
        yield gauge("foresync_verify_mismatches", "Extents the running or last verify found "
                    "different.", p.verify.mismatches if p else 0)
        resync_active = p.resync.active if p else bool(v and v.resync.active)
        yield gauge("foresync_resync_active", "1 while a resync pass runs (or this secondary "
                    "waits for one to finish).", 1 if resync_active else 0)
        total = GaugeMetricFamily("foresync_resync_total_bytes", "Bytes of the current (or last) "
                                  "resync pass, by phase: compare (checksums), send (known so far).",
                                  labels=[*LABELS, "phase"])
        done = GaugeMetricFamily("foresync_resync_done_bytes", "Bytes of the current (or last) "
                                 "resync pass done, by phase.", labels=[*LABELS, "phase"])
        # A secondary reports the same, measured from its side (replication/resync_watch.py).
        r = p.resync if p else v.resync.progress if v else None
        total.add_metric([*labels, "compare"], r.compare_total_bytes if r else 0)
        done.add_metric([*labels, "compare"], r.compare_done_bytes if r else 0)
        total.add_metric([*labels, "send"], r.send_total_bytes if r else 0)
        done.add_metric([*labels, "send"], r.send_done_bytes if r else 0)
        yield total
        yield done
        yield gauge("foresync_resync_received_bytes", "Resync bytes this secondary received in the "
                    "current (or last) pass.", v.resync.received_bytes if v else 0)


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


class _VolumesCollector(Collector):
    """Every volume's collectors as one: each metric family once, with a sample per volume (two
    families of one name would be an invalid exposition)."""

    def __init__(self) -> None:
        self.members: dict[str, list[Collector]] = {}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for collectors in list(self.members.values()):
            for collector in collectors:
                for family in collector.collect():
                    if family.name in merged:
                        merged[family.name].samples.extend(family.samples)
                    else:
                        merged[family.name] = family
        yield from merged.values()


class SiteMetrics:
    """One registry for a daemon: every volume's series (``add_volume``), and the process's."""

    def __init__(self, volume: str | None, statistics: StatisticsFn | None, site: str = "") -> None:
        self.registry = CollectorRegistry()
        self._site = site
        self._volumes = _VolumesCollector()
        self.registry.register(self._volumes)
        if volume is not None and statistics is not None:
            self.write_latency = self.add_volume(volume, statistics)
        # The standard process_* series (CPU, memory, open fds, start time) from /proc.
        ProcessCollector(registry=self.registry)

    def add_volume(self, volume: str, statistics: StatisticsFn) -> LatencyHistogram:
        latency = LatencyHistogram(volume, site=self._site)
        self._volumes.members[volume] = [_StatusCollector(volume, statistics, self._site), latency]
        return latency

    def add_member(self, volume: str, collector: Collector) -> None:
        self._volumes.members[volume].append(collector)

    def remove_volume(self, volume: str) -> None:
        self._volumes.members.pop(volume, None)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
