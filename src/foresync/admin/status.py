"""A site's statistics: one frozen snapshot that feeds both ``GET /status`` and ``GET /metrics``.

Theory of operation: each site (``PrimarySite.statistics()``, ``SecondarySite.statistics()``)
takes a ``SiteStatistics`` at one instant: the fields every site has, and a role part
(``PrimaryView`` or ``SecondaryView``) with what only that role knows. Nothing in the snapshot
is made up: a secondary does not measure lag or record hits, so its part has no such fields.

``status_document`` is the one place the ``/status`` JSON is assembled. Its field names and
value formats are a contract (docs/operations.md, section 4; ``foresync status``, ``/events``
and scripts read them), so it keeps what the document has always held, including the constant
zeros the docs promise on a secondary (``counters.record_hits``, ``lag``, ``resync.done_bytes``
...): they are written here, from nothing, and never enter the snapshot. ``admin/metrics.py``
reads the snapshot itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foresync.replication.primary import PrimaryStatistics
from foresync.replication.progress import ResyncProgress, VerifyProgress
from foresync.replication.secondary import SecondaryStatistics


@dataclass(frozen=True, slots=True)
class PrimaryView:
    """What only a primary knows."""

    core: PrimaryStatistics
    resync: ResyncProgress
    verify: VerifyProgress
    link_rtt_s: float
    secondary_error: str  # the secondary's STORAGE_FAILED report, until a pass completes there
    lag_seconds: float
    eviction: str
    predictor: str
    miss_ratio_estimate: tuple[tuple[int, float], ...]  # (capacity in extents, ratio), ascending
    failback_bound_bytes: int
    full_resync_pending: bool
    metadata_damage: str
    nbd_connections: int


@dataclass(frozen=True, slots=True)
class ResyncReceived:
    """A resync pass seen from the secondary: what arrived and how fast, and the pass's
    progress as the primary reports it, measured here (replication/resync_watch.py)."""

    active: bool  # this copy waits for a pass to finish
    received_bytes: int  # in the current (or last) pass
    rate_bytes_per_s: int  # 0 unless active
    full_compare: bool  # the running pass compares every extent (checksums were sent)
    progress: ResyncProgress
    total_known: bool  # False: an incremental pass in async mode (no resync set is sent)


@dataclass(frozen=True, slots=True)
class SecondaryView:
    """What only a secondary knows."""

    core: SecondaryStatistics
    resync: ResyncReceived
    storage_error: str
    disconnected_since: float | None  # Unix time; None while a primary is connected
    worst_case_divergence_bytes: int
    consistent: bool
    metadata_damage: str
    undo_saved_extents: int
    rolled_back_extents: int
    record_may_be_incomplete: bool
    journal_commits_overlapped: int = 0  # commits started beside one in flight (issue 14)
    misses_added: int = 0  # ADDEDs sent for a MISS read (daemon/miss_answers.py)
    miss_added_s: float = 0.0  # their times from the frame read to the ADDED sent, summed


@dataclass(frozen=True, slots=True)
class SiteStatistics:
    epoch: int
    mode: str
    link: str  # "connected", "handshake" (secondary) or "disconnected"
    link_error: str
    in_sync: bool
    record_extents: int
    record_capacity: int
    extent_size_bytes: int
    writes: int  # host writes submitted (primary); writes applied (secondary)
    storage_errors: int  # writes to this site's own disks that failed
    split_brain: bool
    security: Mapping[str, bool]
    view: PrimaryView | SecondaryView

    @property
    def role(self) -> str:
        return "primary" if isinstance(self.view, PrimaryView) else "secondary"


def status_document(s: SiteStatistics) -> dict[str, Any]:
    """The ``/status`` JSON of a snapshot."""
    if isinstance(s.view, PrimaryView):
        return _primary_document(s, s.view)
    return _secondary_document(s, s.view)


def _primary_document(s: SiteStatistics, p: PrimaryView) -> dict[str, Any]:
    c = p.core
    return {
        "role": "primary",
        "epoch": s.epoch,
        "mode": s.mode,
        "link": s.link,
        "link_error": s.link_error,
        "secondary_error": p.secondary_error,
        "link_rtt_s": round(p.link_rtt_s, 6),
        "in_sync": s.in_sync,
        "record": {"extents": s.record_extents, "capacity": s.record_capacity,
                   "extent_size_bytes": s.extent_size_bytes,
                   "eviction": p.eviction, "predictor": p.predictor,
                   # capacity in extents (a string: a JSON key) -> estimated miss ratio
                   "miss_ratio_estimate": {str(capacity): round(ratio, 5)
                                           for capacity, ratio in p.miss_ratio_estimate}},
        "counters": {"writes": s.writes, "record_hits": c.record_hits,
                     "record_misses": c.record_misses, "resync_bytes": c.resync_bytes,
                     "record_read_aheads": c.record_read_aheads,
                     "record_room_waits": c.record_room_waits, "record_add_waits": c.record_add_waits,
                     "record_evicted_ahead": c.record_evicted_ahead,
                     "record_writes_behind_add": c.record_writes_behind_add,
                     "write_groups": c.write_groups, "grouped_writes": c.grouped_writes,
                     "record_misses_answered": c.record_misses_answered,
                     "record_miss_round_trip_s": round(c.record_miss_round_trip_s, 6),
                     "record_miss_queued_s": round(c.record_miss_queued_s, 6),
                     "record_behind_add_waited_s": round(c.record_behind_add_waited_s, 6),
                     "storage_errors": s.storage_errors,
                     "secondary_storage_errors": c.secondary_storage_errors},
        "lag": {"bytes": c.lag_bytes, "writes": c.lag_writes, "seconds": round(p.lag_seconds, 3)},
        "resync": resync_document(p.resync),
        "security": dict(s.security),
        "split_brain": s.split_brain,
        "verify": verify_document(p.verify),
        "failback_bound_bytes": p.failback_bound_bytes,
        "out_of_sync_extents": c.out_of_sync_extents,
        "full_resync_pending": p.full_resync_pending,
        "metadata_damage": p.metadata_damage,
        "seq": {"last": c.last_seq, "durable": c.durable_seq},
        "nbd": {"connections": p.nbd_connections},
    }


def _secondary_document(s: SiteStatistics, v: SecondaryView) -> dict[str, Any]:
    c = v.core
    return {
        "role": "secondary",
        "epoch": s.epoch,
        "mode": s.mode,
        "link": s.link,
        "link_error": s.link_error,
        "storage_error": v.storage_error,
        "disconnected_since": v.disconnected_since,
        "in_sync": s.in_sync,
        "record": {"extents": s.record_extents, "capacity": s.record_capacity,
                   "extent_size_bytes": s.extent_size_bytes},
        "worst_case_divergence_bytes": v.worst_case_divergence_bytes,
        # The primary counts hits, misses and resync bytes and measures lag; the documented
        # document has always carried them as 0 here (docs/operations.md), so it still does.
        "counters": {"writes": s.writes, "record_hits": 0, "record_misses": 0,
                     "resync_bytes": 0, "storage_errors": s.storage_errors,
                     "journal_commits": c.journal_commits, "misses_received": c.misses_received,
                     "journal_commits_overlapped": v.journal_commits_overlapped,
                     "misses_added": v.misses_added, "miss_added_s": round(v.miss_added_s, 6)},
        "lag": {"bytes": 0, "writes": 0, "seconds": 0.0},
        "seq": {"applied": c.applied_seq, "durable": c.durable_seq},
        "pending_ranges": c.pending_ranges,
        "consistent": v.consistent,
        "metadata_damage": v.metadata_damage,
        "undo_saved_extents": v.undo_saved_extents,
        "rolled_back_extents": v.rolled_back_extents,
        "security": dict(s.security),
        "split_brain": s.split_brain,
        "record_may_be_incomplete": v.record_may_be_incomplete,
        # The same progress as the primary's, measured from this side (issue 17).
        "resync": {**resync_document(v.resync.progress),
                   "received_bytes": v.resync.received_bytes,
                   "full_compare": int(v.resync.full_compare),
                   "total_known": int(v.resync.total_known)},
    }


def resync_document(r: ResyncProgress) -> dict[str, int]:
    return {"done_bytes": r.done_bytes, "total_bytes": r.total_bytes,
            "rate_bytes_per_s": r.rate_bytes_per_s, "remaining_bytes": r.remaining_bytes,
            "active": int(r.active),
            "compare_total_bytes": r.compare_total_bytes,
            "compare_done_bytes": r.compare_done_bytes,
            "compare_rate_bytes_per_s": r.compare_rate_bytes_per_s,
            "send_total_bytes": r.send_total_bytes, "send_done_bytes": r.send_done_bytes,
            "send_rate_bytes_per_s": r.send_rate_bytes_per_s, "passes": r.passes,
            "set_extents": r.set_extents}


def verify_document(v: VerifyProgress) -> dict[str, Any]:
    return {"active": v.active, "done_extents": v.done_extents, "total_extents": v.total_extents,
            "done_bytes": v.done_bytes, "total_bytes": v.total_bytes,
            "rate_bytes_per_s": v.rate_bytes_per_s,
            "mismatched_extents": list(v.mismatched_extents),
            "mismatched_offsets": list(v.mismatched_offsets),
            "mismatches": v.mismatches, "repair": v.repair, "runs": v.runs}
