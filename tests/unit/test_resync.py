"""replication/resync.py: one pass, driven directly (the core's tests drive it through WELCOME)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import xxhash

from foresync.errors import RemoteProtocolError
from foresync.faults import NO_FAULTS
from foresync.link import wire
from foresync.record.record import Eviction, RecordCopy
from foresync.replication.flushes import Flushes
from foresync.replication.out_of_sync import OutOfSync
from foresync.replication.resync import Resync, StartResult

EXTENT = 16
VOLUME = b"v" * 16


@dataclass
class _Rig:
    image: bytearray = field(default_factory=lambda: bytearray(b"a" * EXTENT * 4))
    sent: list[wire.Message] = field(default_factory=list)
    extents_sent: list[int] = field(default_factory=list)
    link_full: bool = False
    seq: int = 0

    def send_extent(self, extent: int, offset: int, length: int, data: bytes) -> int:
        assert bytes(self.image[offset:offset + length]) == data
        self.extents_sent.append(extent)
        self.seq += 1
        return self.seq

    def build(self, rate_max: int = 0, window_max: int = 1 << 20,
              slice_bytes: int = 1 << 20) -> tuple[Resync, Flushes[Any]]:
        oos: OutOfSync[Any] = OutOfSync(lambda *args: None)
        flushes: Flushes[Any] = Flushes(lambda ticket: None, self.sent.append)
        resync = Resync(
            size=len(self.image), extent_size=EXTENT, async_mode=False, rate_max=rate_max,
            slice_bytes=slice_bytes, window_max_bytes=window_max, faults=NO_FAULTS,
            read=lambda offset, length: bytes(self.image[offset:offset + length]), is_hole=None,
            record=RecordCopy(4, Eviction.LRU), out_of_sync=oos, flushes=flushes, busy=set(),
            send=self.sent.append, resume_later=lambda: None,
            link_full=lambda length: self.link_full, send_extent=self.send_extent,
            last_seq=lambda: self.seq, set_confirmed=lambda runs: None)
        return resync, flushes


def _welcome(checksums: bool = False) -> wire.Welcome:
    flags = wire.WelcomeFlag.NEW | (wire.WelcomeFlag.CHECKSUMS if checksums else 0)
    return wire.Welcome(VOLUME, 1, 0, (), flags=flags)


def test_a_full_pass_sends_what_differs_and_skips_what_matches() -> None:
    rig = _Rig()
    same = xxhash.xxh3_64_intdigest(b"a" * EXTENT)
    resync, flushes = rig.build()
    resync.begin(_welcome(checksums=True), full=True, last_seq=0, now=0.0)
    assert isinstance(rig.sent[0], wire.ResyncSet) and rig.sent[0].runs == ((0, 4),)
    assert resync.set_durable(rig.sent[0].set_id) == ((0, 4),)
    resync.on_checksums(0, (same, 0, same, 0))
    resync.pump(0.0)
    assert rig.extents_sent == [1, 3] and not resync.remaining()
    assert not resync.sent_all()  # the last resync write is not durable there yet
    flushes.on_durable(rig.seq)
    assert resync.sent_all()
    resync.end()
    assert rig.sent[-1] == wire.ResyncDone(rig.seq)
    resync.acknowledged(rig.seq)
    assert not resync.active


def _ended(rig: _Rig, everything: bool = False) -> tuple[Resync, OutOfSync[Any]]:
    """A full pass over a new secondary, every extent sent and durable there, RESYNC_DONE sent."""
    resync, flushes = rig.build()
    oos = resync._oos
    oos.everything = everything
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    assert isinstance(rig.sent[0], wire.ResyncSet)
    resync.set_durable(rig.sent[0].set_id)
    resync.pump(0.0)
    flushes.on_durable(rig.seq)
    assert resync.sent_all()
    resync.end()
    assert rig.sent[-1] == wire.ResyncDone(rig.seq)
    return resync, oos


def test_the_pass_ends_only_at_the_secondarys_resync_done_ack() -> None:
    """Issue 25: until the secondary has durably recorded the end (RESYNC_DONE_ACK) it may
    still roll the pass back, so the pass stays active (the primary is not in sync), the failback
    bound keeps its set, "everything" stays, and no second RESYNC_DONE goes meanwhile."""
    rig = _Rig()
    resync, oos = _ended(rig, everything=True)
    assert resync.active and resync.awaiting_ack
    assert resync.bound_runs == ((0, 4),) and resync.pass_runs == () and oos.confirmed == ()
    assert oos.everything
    assert not resync.sent_all()
    resync.acknowledged(rig.seq)
    assert not resync.active and not resync.awaiting_ack
    assert resync.bound_runs == () and not oos.everything and oos.dirty


def test_a_cut_before_the_ack_leaves_the_pass_open() -> None:
    rig = _Rig()
    resync, oos = _ended(rig, everything=True)
    resync.abandon()
    assert resync.active and not resync.awaiting_ack and oos.everything
    with pytest.raises(RemoteProtocolError, match="without a RESYNC_DONE"):
        resync.acknowledged(rig.seq)  # a late ack of the old session is no ack of this one


def test_an_ack_that_answers_no_resync_done_is_refused() -> None:
    rig = _Rig()
    resync, _ = rig.build()
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    with pytest.raises(RemoteProtocolError, match="without a RESYNC_DONE"):
        resync.acknowledged(0)
    rig2 = _Rig()
    resync2, _ = _ended(rig2)
    with pytest.raises(RemoteProtocolError, match="answers no RESYNC_DONE"):
        resync2.acknowledged(rig2.seq + 1)
    assert resync2.active


def test_an_extent_queued_while_the_ack_is_awaited_keeps_the_pass_going() -> None:
    """A repair (or a failed local write) after RESYNC_DONE: the ack does not end the pass,
    which sends the extent and ends again with a RESYNC_DONE of its own."""
    rig = _Rig()
    resync, _ = _ended(rig)
    first_done = rig.seq
    resync.queue(2, now=1.0)
    assert isinstance(rig.sent[-1], wire.ResyncSet) and rig.sent[-1].runs == ((2, 1),)
    resync.acknowledged(first_done)
    assert resync.active and resync.remaining() == 1
    resync.set_durable(rig.sent[-1].set_id)
    resync.pump(1.0)
    resync._flushes.on_durable(rig.seq)
    assert resync.sent_all() and rig.seq == first_done + 1
    resync.end()
    assert rig.sent[-1] == wire.ResyncDone(first_done + 1)
    resync.acknowledged(first_done + 1)
    assert not resync.active


def test_start_says_why_an_extent_must_wait() -> None:
    rig = _Rig()
    resync, _ = rig.build(rate_max=EXTENT)
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    assert resync._start(0, now=0.0) is StartResult.SENT
    assert resync._start(1, now=0.0) is StartResult.RATE  # the budget refills at 16 B/s
    assert resync._start(1, now=1.0) is StartResult.SENT
    rig.link_full = True
    assert resync._start(2, now=5.0) is StartResult.WINDOW
    assert rig.extents_sent == [0, 1]


def test_the_resync_window_holds_back_what_is_not_applied_there() -> None:
    rig = _Rig()
    resync, _ = rig.build(window_max=EXTENT)  # one extent in flight at most
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    resync.pump(0.0)
    assert rig.extents_sent == [0] and resync.remaining() == 3
    resync.on_applied(1)
    resync.pump(0.0)
    assert rig.extents_sent == [0, 1]


def test_a_full_pass_compares_checksums_as_they_stream_in_and_waits_for_the_rest() -> None:
    rig = _Rig()
    same = xxhash.xxh3_64_intdigest(b"a" * EXTENT)
    resync, flushes = rig.build()
    resync.begin(_welcome(checksums=True), full=True, last_seq=0, now=0.0)
    resync.pump(0.0)
    assert rig.extents_sent == [] and resync.remaining() == 4  # nothing to compare with yet
    resync.on_checksums(0, (0, same))
    resync.pump(0.0)
    assert rig.extents_sent == [0] and resync.remaining() == 2  # waits at extent 2
    assert resync.checksums is not None and resync.checksums.held == 0  # the chunk is dropped
    resync.on_checksums(2, (same, 0))
    resync.pump(0.0)
    assert rig.extents_sent == [0, 3] and not resync.remaining()
    flushes.on_durable(rig.seq)
    assert not resync.sent_all()  # the set is not durable there yet
    assert isinstance(rig.sent[0], wire.ResyncSet) and resync.set_durable(rig.sent[0].set_id)
    assert resync.sent_all()


def test_checksums_out_of_order_past_the_volume_or_unasked_are_refused() -> None:
    rig = _Rig()
    resync, _ = rig.build()
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    with pytest.raises(RemoteProtocolError, match="without a full sync"):
        resync.on_checksums(0, (1,))
    resync.begin(_welcome(checksums=True), full=True, last_seq=0, now=0.0)
    with pytest.raises(RemoteProtocolError, match="out of order"):
        resync.on_checksums(1, (1,))
    with pytest.raises(RemoteProtocolError, match="out of order"):
        resync.on_checksums(0, (1, 2, 3, 4, 5))


def _resumed(checksums: bool = True) -> wire.Welcome:
    flags = wire.WelcomeFlag.INCONSISTENT | wire.WelcomeFlag.RESUME
    flags |= wire.WelcomeFlag.CHECKSUMS if checksums else 0
    return wire.Welcome(VOLUME, 1, 0, (0,), flags=flags, resync=((2, 2),))


def test_an_interrupted_pass_resumes_over_what_the_secondary_has_left() -> None:
    """Issue 19: after a cut the secondary offers the runs left of its journaled set; the pass
    sweeps only those (comparing their streamed checksums) plus its record, not every extent."""
    rig = _Rig()
    rig.image[2 * EXTENT:3 * EXTENT] = b"b" * EXTENT  # extent 2 differs there, extent 3 is the same
    same = xxhash.xxh3_64_intdigest(b"a" * EXTENT)
    resync, flushes = rig.build()
    resync.begin(_resumed(), full=True, last_seq=0, now=0.0)
    assert isinstance(rig.sent[0], wire.ResyncSet) and rig.sent[0].runs == ((0, 1), (2, 2))
    assert resync.remaining() == 3 and resync.checksums is not None and resync.checksums.expected == 2
    resync.pump(0.0)
    assert rig.extents_sent == [0]  # the record's extent goes; the sweep waits for checksums
    with pytest.raises(RemoteProtocolError, match="out of order"):
        resync.on_checksums(0, (same,))  # not one of the runs offered
    resync.on_checksums(2, (same, same))
    resync.pump(0.0)
    assert rig.extents_sent == [0, 2] and not resync.remaining()
    # Progress waits for our own flush of what was read, then names every extent done.
    assert not any(isinstance(m, wire.ResyncProgress) for m in rig.sent)
    flushes.local_durable = rig.seq
    resync.send_progress()
    progress = [m for m in rig.sent if isinstance(m, wire.ResyncProgress)]
    assert progress == [wire.ResyncProgress(rig.seq, ((0, 1), (2, 2)))]


def test_a_primary_that_doubts_everything_does_not_resume() -> None:
    rig = _Rig()
    resync, _ = rig.build()
    resync._oos.everything = True  # our out-of-sync store was lost: full_resync_pending
    resync.begin(_resumed(checksums=False), full=True, last_seq=0, now=0.0)
    assert isinstance(rig.sent[0], wire.ResyncSet) and rig.sent[0].runs == ((0, 4),)
    resync.pump(0.0)
    assert rig.extents_sent == [0, 1, 2, 3]


def test_a_pump_does_nothing_while_a_resume_is_pending() -> None:
    """The owner pumps after every message and host write: a slice for each of a burst of
    CHECKSUMS chunks held the primary's loop for 0.8 s at 1 TiB. One slice, then nothing until
    the resume the slice asked for."""
    rig = _Rig()
    resync, _ = rig.build(slice_bytes=EXTENT)  # one extent's work per slice
    resync.begin(_welcome(), full=True, last_seq=0, now=0.0)
    resync.pump(0.0)
    assert rig.extents_sent == [0]
    resync.pump(0.0)  # a message or host write meanwhile
    resync.pump(0.0)
    assert rig.extents_sent == [0]
    resync.resume()
    resync.pump(0.0)
    assert rig.extents_sent == [0, 1]
