"""Snapshots of a primary's long-running work: the resync pass and the online verify.

Theory of operation: ``PrimaryCore.resync_progress()`` and ``verify_progress()`` return these
frozen values, taken at one instant; nothing holds on to the core's state. The admin layer puts
them into ``/status`` (``admin/status.py``, the one place the document is assembled) and
``/metrics``, under the field names below, which are a contract (docs/operations.md, section 4).
Pure: no I/O, no clock; rates are computed from the ``now`` the core was last given.
"""

from __future__ import annotations

from dataclasses import dataclass

MISMATCHES_SHOWN = 1000  # /status lists this many mismatched extents at most


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    """The current (or last) resync pass. Besides the whole pass, its two phases apart:
    comparing (extents the secondary sent checksums for; a match costs no send) and sending
    (extents without a checksum plus those found to differ so far, so its total grows while
    comparing goes on). Each has its own rate, hence its own ETA."""

    done_bytes: int
    total_bytes: int
    rate_bytes_per_s: int  # of sending; 0 once the pass is over
    active: bool
    compare_total_bytes: int
    compare_done_bytes: int
    compare_rate_bytes_per_s: int
    send_total_bytes: int
    send_done_bytes: int
    passes: int  # passes started since the core was made
    set_extents: int  # extents of the running pass the secondary holds in its resync set

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.total_bytes - self.done_bytes)

    @property
    def send_rate_bytes_per_s(self) -> int:
        return self.rate_bytes_per_s


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """The current (or last) online verify: extents and bytes, a rate while it runs (issue 17:
    ``672/1024 extents`` alone gave no idea of the time left), and the first mismatched
    extents with their byte offsets."""

    active: bool
    done_extents: int
    total_extents: int
    done_bytes: int
    total_bytes: int
    rate_bytes_per_s: int  # a finished verify: its average
    mismatched_extents: tuple[int, ...]  # the first MISMATCHES_SHOWN, in order
    mismatched_offsets: tuple[int, ...]  # their byte offsets
    mismatches: int  # all of them
    repair: bool
    runs: int  # verifies started since the core was made
