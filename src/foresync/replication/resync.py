"""The primary's resync pass: what may differ is copied again, from this image, extent by extent.

Theory of operation (issue 19). A pass starts at WELCOME (``begin``) with every extent that may
differ: the secondary's record and stale extents, our out-of-sync set, the ranges it had pending;
or, for a new or half-synced secondary (or a lost out-of-sync store), the whole volume, swept in
order instead of listed (a million extents at 1 TiB took 130 ms and 100 MB to list). A new or
half-synced secondary streams its checksums behind the WELCOME (checksums.py); the sweep
compares each extent once its checksum is here and waits for the stream when it catches up.
RESYNC_PROGRESS tells the secondary which extents are done (as of a seq): it takes them out of
its journaled set once that seq is durable there. After a cut its WELCOME says RESUME with the
runs left, and the new pass sweeps only those (plus record, stale and our out-of-sync set),
comparing by checksum as before: it resumes instead of starting over. The pass
needs no room in the record: it first sends RESYNC_SET, the runs of extents it may change, which
the secondary journals as one entry before any later effect and answers with RESYNC_SET_DURABLE.
Only then may those extents leave our out-of-sync set (``OutOfSync.confirm``). A repair or a
failed local write mid-pass adds one extent with a set of its own (``queue``).

Each extent goes as a plain RESYNC write of its data read at send time (the owner's ``send_extent``
assigns the seq and transmits in the same step, so nothing lands in between). A full sync with the
secondary's checksums first compares (``_same_there``): a match sends nothing. An extent with an
earlier op still to land locally is deferred. Sending stops when the link window is full, when
the resync window is (bytes sent and not yet APPLIED there: about twice bandwidth x RTT, tuned as
the pass runs, so that resync queues at most about one RTT ahead of host writes), or when the
rate budget (``resync_rate_max``) is spent; ``StartResult`` says which. One ``pump`` does at most
``resync_slice_bytes`` of reading and hashing, then asks to be resumed (ResumeLater): the event
loop keeps answering heartbeats however large the volume (a 1 TiB full sync once held it 50 s).

The pass is done once every extent is sent or found identical, every set is durable there, the
secondary's durable watermark covers the last resync write and our own flush covers what we read
(``sent_all``); then ``end`` sends RESYNC_DONE, which clears the secondary's set. The pass is
over only at its RESYNC_DONE_ACK (``acknowledged``): the secondary sends it once it has durably
recorded the end (image flushed, site metadata consistent, the clear committed). Until then it
may still roll the pass back at a restart (its undo log), so the pass stays ``active`` (we are
not in sync) and a cut before the ack leaves it open: the next WELCOME starts another pass over
what its copy then reports (stale extents after a rollback, or the whole volume) (issue 25).

Pure: the owner passes ``now`` and the callbacks; the record, the out-of-sync set and the flush
watermarks are shared plain objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container
from enum import Enum
from typing import Any

import xxhash

from foresync.errors import RemoteProtocolError
from foresync.faults import Faults
from foresync.link import wire
from foresync.record import runs as extent_runs
from foresync.record.predict import extents_of
from foresync.record.record import UNSENT, RecordCopy
from foresync.replication.checksums import RemoteChecksums
from foresync.replication.flushes import Flushes
from foresync.replication.out_of_sync import OutOfSync
from foresync.replication.progress import ResyncProgress

_NOT_YET_SENT = UNSENT  # a write seq above any real one: "dirty until resynced" (record.py)
# Work one pump may do for a resync before it yields to the event loop (ResumeLater), counted in
# bytes read or hashed; a hole found by ``is_hole`` counts HOLE_CHECK_COST. 16 MiB is about 6 ms
# of xxh3 and reads from the page cache: the loop keeps answering the admin endpoint and the
# link's heartbeats however large the volume (a 1 TiB full sync once held it for 50 s).
RESYNC_SLICE_BYTES = 16 * 1024 * 1024
# Resync bytes sent and not yet APPLIED there: about twice bandwidth x RTT, tuned as the pass
# runs (``tune_window``), between RESYNC_WINDOW_MIN_BYTES and ``resync_window_bytes``.
# Everything in flight is queued ahead of a host write that must wait for the secondary (a
# miss's ADDED): with the whole 64 MiB link window full of resync, a host 4 KiB write's p99 was
# 380 ms during an initial sync at 6.5 ms RTT, 8 ms with 4 MiB in flight (1.7 ms without a
# sync), but 4 MiB fill only 80 MB/s at 50 ms RTT.
RESYNC_WINDOW_BYTES = 32 * 1024 * 1024
RESYNC_WINDOW_MIN_BYTES = 2 * 1024 * 1024
RESYNC_WINDOW_START_BYTES = 4 * 1024 * 1024
RATE_SAMPLE_S = 0.1  # the shortest interval a throughput sample covers
RATE_SAMPLES = 10  # the window follows the best of the last few samples
# RESYNC_PROGRESS goes once this many extents are done (and at the end of the sweep): a cut
# repeats at most these, and a 1 TiB sweep of 1 MiB extents sends 16K small messages.
PROGRESS_EXTENTS = 64
HOLE_CHECK_COST = 16 * 1024  # SEEK_DATA on a sparse file: about 2 us, as 16 KiB of hashing


class StartResult(Enum):
    """What ``_start`` did with one extent."""

    SENT = "sent"  # its data went
    SAME = "same"  # the secondary's checksum matches: nothing to send
    WINDOW = "window"  # not now: the link window or the resync window is full
    RATE = "rate"  # not now: the rate budget (resync_rate_max) is spent


class Resync:
    def __init__(self, *, size: int, extent_size: int, async_mode: bool, rate_max: int,
                 slice_bytes: int, window_max_bytes: int, faults: Faults,
                 read: Callable[[int, int], bytes], is_hole: Callable[[int, int], bool] | None,
                 record: RecordCopy, out_of_sync: OutOfSync[Any], flushes: Flushes[Any],
                 busy: Container[int], send: Callable[[wire.Message], None],
                 resume_later: Callable[[], None], link_full: Callable[[int], bool],
                 send_extent: Callable[[int, int, int, bytes], int],
                 last_seq: Callable[[], int],
                 set_confirmed: Callable[[extent_runs.Runs], None]) -> None:
        self._size = size
        self._extent_size = extent_size
        self.extent_count = -(-size // extent_size)
        self._async = async_mode
        self._rate_max = rate_max
        self._slice_bytes = slice_bytes
        self._window_max = window_max_bytes
        self._faults = faults
        self._read = read
        self._is_hole = is_hole  # a cheap "this range reads as zeroes" (SEEK_DATA), if any
        self._record = record
        self._oos = out_of_sync
        self._flushes = flushes
        self._busy = busy  # extents with an earlier op still to land locally
        self._send = send
        self._resume_later = resume_later
        self._link_full = link_full  # whether ``length`` more bytes overflow the link window
        self._send_extent = send_extent  # (extent, offset, length, data) -> the seq it went with
        self._last_seq = last_seq
        self._set_confirmed = set_confirmed  # a RESYNC_SET is durable there (OutOfSync.confirm)
        self.session = False  # WELCOME came and the link has not dropped since
        self.todo: deque[int] = deque()  # extents still to resync
        self.set: set[int] = set()  # ... the same, as a set
        # A full sync sweeps [sweep_next, sweep_end) in order instead of listing every extent;
        # a resumed one sweeps the runs left of the secondary's set, the rest of them queued.
        self.sweep_next = self.sweep_end = 0
        self._sweep_rest: deque[tuple[int, int]] = deque()
        self._sweep_rest_count = 0
        self._progress: list[int] = []  # extents done since the last batch of RESYNC_PROGRESS
        # Batches waiting for our own flush: (local need, seq, runs). What went was read from
        # our page cache: only once that is durable here too may the secondary forget them.
        self._progress_ready: deque[tuple[int, int, extent_runs.Runs]] = deque()
        self.checksums: RemoteChecksums | None = None  # the secondary's, streamed (full sync)
        self._hashes_void: set[int] = set()  # queued again by verify: their hash is old
        self._differs = -1  # the extent last found to differ: not hashed again when retried
        self._zero_hashes: dict[int, int] = {}  # length -> xxh3 of that many zero bytes
        self._resume_asked = False
        self._slice_work = 0  # work done by the running pump (slice_bytes)
        self.unapplied: deque[tuple[int, int]] = deque()  # (seq, bytes) resync in flight
        self._unapplied_bytes = 0
        self.window = min(RESYNC_WINDOW_START_BYTES, window_max_bytes)
        self.rtt_min_s = 0.0  # the least link round trip seen this session (``observe_rtt``)
        self.applied_bytes = 0  # resync bytes APPLIED there, ever
        self._rate_mark: tuple[float, int] = (0.0, 0)  # (now, applied bytes) of the last sample
        self._rate_samples: deque[float] = deque(maxlen=RATE_SAMPLES)  # bytes/s
        self.active = False  # a pass started at WELCOME and its RESYNC_DONE_ACK not yet here
        self.awaiting_ack = False  # RESYNC_DONE went, its RESYNC_DONE_ACK has not come
        self._done_seq = 0  # the seq that RESYNC_DONE named
        # The set the secondary held until our RESYNC_DONE: it may still roll those extents back
        # (stale there) until the ack, so the failback bound keeps them (``bound_runs``).
        self._ending_runs: extent_runs.Runs = ()
        self._total_bytes = 0
        self._done_bytes = 0
        self._sent_bytes = 0
        # Comparing (checksums, nothing sent when they match) and sending progress at different
        # rates: a single ETA from the send rate counted skipped extents as still to send.
        self._compare_total_bytes = 0
        self._compared_bytes = 0
        self._send_total_bytes = 0  # known so far: grows as comparisons find differences
        self._started = 0.0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._passes = 0  # started so far: a watcher that samples sees even a short one
        self.last_seq = 0  # the last resync write of the pass
        self.local_need = 0  # our own flush must cover this before RESYNC_DONE
        self._set_ids = 0  # RESYNC_SET ids sent (this process)
        self._sets_unconfirmed: dict[int, extent_runs.Runs] = {}  # id -> runs: not durable there
        self.pass_runs: extent_runs.Runs = ()  # every set sent this pass: the secondary's set

    # -- the session ------------------------------------------------------------------------------

    def session_start(self) -> None:
        """A new connection: its round trips and throughput are measured afresh."""
        self.rtt_min_s = 0.0
        self._rate_samples.clear()
        self._rate_mark = (0.0, 0)

    def abandon(self) -> None:
        """The link is gone: what was still to send stays in the record or the out-of-sync set
        (the pass itself stays open: the set the secondary holds still counts in the bound)."""
        self.session = False
        self.todo.clear()
        self.set.clear()
        self._start_sweep(())
        self._progress = []
        self._progress_ready.clear()
        self.checksums = None
        self.unapplied.clear()
        self._unapplied_bytes = 0
        self._sets_unconfirmed.clear()  # their extents never left our out-of-sync set
        self.awaiting_ack = False  # no ack: the pass stays open, the next WELCOME starts anew

    def begin(self, welcome: wire.Welcome, full: bool, last_seq: int, now: float) -> None:
        """WELCOME: resync what may differ (everything if ``full``)."""
        self.session = True
        self.awaiting_ack = False
        self._ending_runs = ()
        self.checksums = None
        self._hashes_void = set()
        self._differs = -1
        count = self.extent_count
        self._progress = []
        self._progress_ready.clear()
        # An interrupted pass resumes over what the secondary durably knows is left, unless we
        # doubt more ourselves (our out-of-sync store said "everything": full_resync_pending).
        resume = (full and bool(welcome.flags & wire.WelcomeFlag.RESUME) and not self._oos.everything
                  and not self._async)
        if full and not resume:
            # Built without sorting: a million extents at 1 TiB (full_resync_pending stays
            # until RESYNC_DONE).
            self.set = set()
            self.todo = deque()
            sweep: extent_runs.Runs = ((0, count),) if count else ()
            listed = sweep
        else:
            sweep = self._resumed_runs(welcome) if resume else ()
            todo = set(welcome.record) | self._oos.extents | set(welcome.stale)
            for _, offset, length in welcome.ranges:
                todo.update(extents_of(offset, length, self._extent_size))
            self.set = {e for e in todo if e < count and not extent_runs.contains(sweep, e)}
            self.todo = deque(sorted(self.set))
            listed = extent_runs.runs_of(self.set)
        self._start_sweep(sweep)
        if full and welcome.flags & wire.WelcomeFlag.CHECKSUMS:
            # A secondary that offered to resume streams checksums of its runs only: if we do
            # not resume (we doubt more: it should have seen that in our HELLO), the extents
            # outside them are sent without comparing.
            offered = self._resumed_runs(welcome) if welcome.flags & wire.WelcomeFlag.RESUME else sweep
            self.checksums = RemoteChecksums(offered)
        runs = extent_runs.union(listed, sweep)
        self._sets_unconfirmed = {}
        self.pass_runs = self._oos.confirmed = ()
        if runs:
            self._send_set(runs)
        self._mark_record(last_seq)
        self.active = True
        self._total_bytes = self.remaining() * self._extent_size
        self._done_bytes = self._sent_bytes = 0
        # A full sync with the secondary's checksums compares every extent before sending.
        with_hash = self.checksums.expected if self.checksums is not None else 0
        self._compare_total_bytes = with_hash * self._extent_size
        self._compared_bytes = 0
        self._send_total_bytes = max(0, self.remaining() - with_hash) * self._extent_size
        self._passes += 1
        self._started = now
        self._tokens = float(min(self._rate_max, self._extent_size))
        self._tokens_at = now

    def _mark_record(self, last_seq: int) -> None:
        """Until its resync data is durable there, an extent to resync must not be evicted (in
        async mode the mark also makes an unsent one out-of-sync at a disconnect). With a
        record, the set the secondary journals covers the others: only those in the record are
        marked, so a full sync keeps no mark per extent of the volume."""
        record = self._record
        record.clear_marks(last_seq)
        if self._async:
            record.note_write(self.set, _NOT_YET_SENT)
            record.note_write(range(self.sweep_end), _NOT_YET_SENT)  # a full sweep (no resume)
        else:
            chosen = self.set
            record.note_write((e for e in record.extents() if e in chosen or self._in_sweep(e)),
                              _NOT_YET_SENT)

    def queue(self, extent: int, now: float) -> None:
        """Copy one extent again (verify --repair, a failed local write); it stays out-of-sync
        until it is."""
        self._oos.extents.add(extent)
        self._oos.dirty = True
        self._hashes_void.add(extent)  # verify found it differs: a full sync's checksum is old
        if extent not in self.set and not self._in_sweep(extent):
            self.set.add(extent)
            self.todo.append(extent)
            self._record.note_write((extent,), _NOT_YET_SENT)
            self._send_set(((extent, 1),))
        if not self.active:
            self.active = True
            self._total_bytes = self._done_bytes = self._sent_bytes = 0
            self._compare_total_bytes = self._compared_bytes = 0
            self._send_total_bytes = 0
            self._passes += 1
            self._started = now
        self._total_bytes += self._extent_size
        self._send_total_bytes += self._extent_size

    # -- RESYNC_SET ---------------------------------------------------------------------------------

    def _send_set(self, runs: extent_runs.Runs) -> None:
        """Tell the secondary which extents the pass may change (it journals them before any
        effect after this message). Not in async mode: the secondary keeps nothing there."""
        if self._async or not self.session:
            return
        self._set_ids += 1
        self.pass_runs = extent_runs.union(self.pass_runs, runs)
        self._send(wire.ResyncSet(self._set_ids, runs))
        if self._faults.resync_before_set_durable:
            self._set_confirmed(runs)  # deliberately wrong: see faults.py
            return
        self._sets_unconfirmed[self._set_ids] = runs

    def set_durable(self, set_id: int) -> extent_runs.Runs | None:
        """RESYNC_SET_DURABLE: the runs of that set (None: no such set outstanding)."""
        return self._sets_unconfirmed.pop(set_id, None)

    # -- sending ----------------------------------------------------------------------------------

    def remaining(self) -> int:
        """Extents of the running pass still to compare or send."""
        return len(self.set) + self.sweep_end - self.sweep_next + self._sweep_rest_count

    def pending(self) -> tuple[int, ...]:
        """Every extent still to compare or send."""
        return (*self.set, *range(self.sweep_next, self.sweep_end),
                *extent_runs.expand(tuple(self._sweep_rest)))

    def _resumed_runs(self, welcome: wire.Welcome) -> extent_runs.Runs:
        """The runs left of an interrupted pass's set, as the secondary reports them."""
        for first, count in welcome.resync:
            if count < 1 or first + count > self.extent_count:
                raise RemoteProtocolError(f"WELCOME resync run {first}+{count} is outside the volume")
        return extent_runs.normalise(welcome.resync)

    def _start_sweep(self, runs: extent_runs.Runs) -> None:
        self._sweep_rest = deque(runs)
        self._sweep_rest_count = extent_runs.count(runs)
        self.sweep_next = self.sweep_end = runs[0][0] if runs else 0
        self._sweeping()

    def _sweeping(self) -> bool:
        """Whether extents are left to sweep (moving on to the next run when one is done)."""
        while self.sweep_next >= self.sweep_end and self._sweep_rest:
            first, count = self._sweep_rest.popleft()
            self._sweep_rest_count -= count
            self.sweep_next, self.sweep_end = first, first + count
        return self.sweep_next < self.sweep_end

    def _in_sweep(self, extent: int) -> bool:
        return (self.sweep_next <= extent < self.sweep_end
                or (bool(self._sweep_rest) and extent_runs.contains(tuple(self._sweep_rest), extent)))

    def resume(self) -> None:
        self._resume_asked = False

    def pump(self, now: float) -> None:
        """Send resync extents while the window and the rate allow, doing at most a slice of
        work before asking to be resumed. An extent still waiting for an earlier op to land
        locally is retried later; the others go on. While a resume is pending (the last pump
        used up its slice) this does nothing: the owner pumps after every message and host
        write, and a slice each (checksum chunks arrive in bursts) held the loop for a second
        at 1 TiB and put a slice in front of every host write's answer."""
        if self._resume_asked:
            self.send_progress()
            return
        deferred: list[int] = []
        self._slice_work = 0
        todo = self.todo
        while todo or self._sweeping():
            if self._slice_work >= self._slice_bytes:
                if not self._resume_asked:
                    self._resume_asked = True
                    self._resume_later()
                break
            swept = not todo
            if swept:
                extent = self.sweep_next
                if (self.checksums is not None and not self.checksums.has(extent)
                        and not self._faults.resync_compares_before_checksum):
                    break  # its checksum is still on its way (on_checksums resumes)
                self.sweep_next += 1
            else:
                extent = todo.popleft()
            if extent in self._busy:
                deferred.append(extent)  # an earlier op on it still has to land locally
                self.set.add(extent)
                continue
            if self._start(extent, now) in (StartResult.WINDOW, StartResult.RATE):
                if swept:
                    self.sweep_next -= 1
                else:
                    todo.appendleft(extent)
                break
        todo.extendleft(reversed(deferred))
        if self.checksums is not None:
            self.checksums.release_below(self.sweep_next)
        if self._progress and (len(self._progress) >= PROGRESS_EXTENTS or not self.remaining()):
            done, self._progress = self._progress, []
            if not self._async:  # no set there to shrink in async mode
                self._progress_ready.append((self.local_need, self._last_seq(), extent_runs.runs_of(done)))
        self.send_progress()

    def send_progress(self) -> None:
        """RESYNC_PROGRESS for the batches our own flush now covers: those extents hold our
        data there once everything through the seq is durable there (sent as resync writes,
        or found identical with every earlier write on the stream), and what we read for them
        is durable here: the secondary may then take them out of its set."""
        ready = self._progress_ready
        while ready and ready[0][0] <= self._flushes.local_durable and self.session:
            _, seq, runs = ready.popleft()
            self._send(wire.ResyncProgress(seq, runs))

    def on_checksums(self, first: int, hashes: tuple[int, ...]) -> None:
        """A CHECKSUMS chunk for the running full sync (the owner pumps next)."""
        if self.checksums is None:
            raise RemoteProtocolError("CHECKSUMS without a full sync that asked for them")
        self.checksums.add(first, hashes)

    def sent_all(self) -> bool:
        """Whether the pass has sent everything, every set and the last resync write are
        durable there. It may then end once our own flush covers ``local_need`` (what we sent,
        or found identical, was read from our page cache)."""
        if not self.active or self.awaiting_ack or self.remaining() or self._sets_unconfirmed:
            return False
        return self._flushes.remote_durable >= self.last_seq

    def end(self) -> None:
        """Every extent of the pass now holds our data there, durably on both sites. RESYNC_DONE
        tells the secondary: it clears its set (so its coverage, ``confirmed``, goes now) and
        records that its copy is consistent again, then answers RESYNC_DONE_ACK. The pass stays
        active until that answer (``acknowledged``)."""
        self.checksums = None
        self._hashes_void = set()
        self._ending_runs = extent_runs.union(self._ending_runs, self.pass_runs)
        self.pass_runs = self._oos.confirmed = ()
        self.awaiting_ack = True
        self._done_seq = self.last_seq
        self._send(wire.ResyncDone(self.last_seq))
        if self._faults.in_sync_before_resync_done_durable:
            self.acknowledged(self.last_seq)  # deliberately wrong: see faults.py

    def acknowledged(self, seq: int) -> None:
        """RESYNC_DONE_ACK: the secondary durably recorded the end of the pass (a restart there
        no longer rolls it back). The pass is over, unless extents were queued meanwhile (a
        repair, a failed local write): then it goes on and ends with a RESYNC_DONE of its own."""
        if not self.awaiting_ack:
            if self._faults.in_sync_before_resync_done_durable:
                return  # the fault ended the pass already
            raise RemoteProtocolError(f"RESYNC_DONE_ACK {seq} without a RESYNC_DONE waiting for it")
        if seq != self._done_seq:
            raise RemoteProtocolError(f"RESYNC_DONE_ACK {seq} answers no RESYNC_DONE (sent {self._done_seq})")
        self.awaiting_ack = False
        self._ending_runs = ()
        if self.remaining() or self._sets_unconfirmed or self.pass_runs:
            return
        self.active = False
        if self._oos.everything:
            self._oos.everything = False  # a cut before this point starts the pass again
            self._oos.dirty = True  # the stored "everything" may go now (lazily)

    @property
    def bound_runs(self) -> extent_runs.Runs:
        """Every extent the secondary may hold in a resync set, or roll back: the running pass's
        sets, and those of a pass whose RESYNC_DONE is not yet acknowledged."""
        return extent_runs.union(self.pass_runs, self._ending_runs) if self._ending_runs else self.pass_runs

    def _refill_rate(self, now: float) -> bool:
        """Whether the resync rate budget allows another extent now (link.resync_rate_max)."""
        rate = self._rate_max
        if not rate:
            return True
        elapsed = max(0.0, now - self._tokens_at)
        self._tokens = min(float(rate), self._tokens + elapsed * rate)
        self._tokens_at = now
        return self._tokens >= min(rate, self._extent_size)

    def _start(self, extent: int, now: float) -> StartResult:
        """Send one extent's current data, find it identical there, or say why not now."""
        offset = extent * self._extent_size
        length = min(self._extent_size, self._size - offset)
        compared = self._same_there(extent, offset, length)
        if compared is True:
            self._progress.append(extent)
            self.set.discard(extent)
            self.local_need = self._last_seq()
            self._resynced(extent)
            if self._record.last_seq(extent) == _NOT_YET_SENT:
                # Identical there as of now. A host write to it since the WELCOME went
                # out with a seq of its own, which the mark hid: count up to the last seq
                # so far, so the extent is clean once that is durable on both sites.
                self._record.resynced(extent, self._last_seq())
            self._done_bytes += length
            return StartResult.SAME
        if self._link_full(length):
            return StartResult.WINDOW
        if self.unapplied and self._unapplied_bytes + length > self.window:
            return StartResult.WINDOW
        if not self._refill_rate(now):
            return StartResult.RATE
        # Read and send in one step (the data just compared, if any, is that read): nothing can
        # land on this extent in between. No record room is needed: the resync set journaled
        # there covers the extent until RESYNC_DONE.
        if not isinstance(compared, bytes):
            self._slice_work += length
            compared = self._read(offset, length)
        self._differs = -1
        seq = self._send_extent(extent, offset, length, compared)
        self.unapplied.append((seq, length))
        self._unapplied_bytes += length
        self._progress.append(extent)
        self._resynced(extent)
        self.set.discard(extent)
        self.last_seq = self.local_need = seq
        self._done_bytes += length
        self._sent_bytes += length
        # An extent whose checksum was void (written since) is sent without comparing.
        self._send_total_bytes = max(self._send_total_bytes, self._sent_bytes)
        if self._rate_max:
            self._tokens -= length
        return StartResult.SENT

    def _same_there(self, extent: int, offset: int, length: int) -> bool | bytes:
        """Whether the secondary's checksum (full sync) shows the extent identical there: True,
        False (nothing to compare), or our data, read and found different (sent as it is, not
        read twice). A hole here against the checksum of zeroes there needs no hashing."""
        checksums = self.checksums
        if checksums is None or extent == self._differs or extent in self._hashes_void:
            return False
        remote = checksums.get(extent)
        if remote is None and self._faults.resync_compares_before_checksum:
            return True  # deliberately wrong: see faults.py
        if remote is None:
            return False  # dropped: the sweep passed it, and it was deferred (sent as it is)
        zero = self._zero_hashes.get(length)
        if zero is None:
            zero = self._zero_hashes[length] = xxhash.xxh3_64_intdigest(bytes(length))
        self._compared_bytes += self._extent_size  # once: a retry is not hashed
        if remote == zero and self._is_hole is not None:
            self._slice_work += HOLE_CHECK_COST
            if self._is_hole(offset, length):
                return True
        self._slice_work += length
        data = self._read(offset, length)
        if xxhash.xxh3_64_intdigest(data) == remote:
            return True
        self._send_total_bytes += self._extent_size
        self._differs = extent  # the window may be full: the retry sends without hashing again
        return data

    def _resynced(self, extent: int) -> None:
        """The extent's resync data went (or it was found identical): it leaves our out-of-sync
        set if something else now covers it there: the record, or a resync set that is durable
        there (in async mode nothing does, nor needs to)."""
        oos = self._oos
        if extent in oos.extents and (
                self._async or extent in self._record
                or extent_runs.contains(oos.confirmed, extent)):
            oos.discard(extent)

    # -- the window ---------------------------------------------------------------------------------

    def on_applied(self, seq: int) -> None:
        """APPLIED up to ``seq`` there: resync writes up to it leave the resync window."""
        unapplied = self.unapplied
        while unapplied and unapplied[0][0] <= seq:
            size = unapplied.popleft()[1]
            self._unapplied_bytes -= size
            self.applied_bytes += size

    def observe_rtt(self, rtt_s: float) -> None:
        if rtt_s > 0 and (not self.rtt_min_s or rtt_s < self.rtt_min_s):
            self.rtt_min_s = rtt_s

    def tune_window(self, now: float) -> None:
        """Resync bytes in flight: twice the best recent throughput times the least RTT, so the
        link stays full (a window too small caps the throughput it measures, and doubling it
        grows it) while no more than about one RTT of resync queues ahead of host writes."""
        mark_at, mark_bytes = self._rate_mark
        elapsed = now - mark_at
        if elapsed < RATE_SAMPLE_S:
            return
        self._rate_mark = (now, self.applied_bytes)
        if not mark_at or not self.unapplied:
            return  # no sample yet, or the window was not the limit
        self._rate_samples.append((self.applied_bytes - mark_bytes) / elapsed)
        if self.rtt_min_s:
            wanted = int(2 * max(self._rate_samples) * self.rtt_min_s)
            self.window = min(self._window_max, max(RESYNC_WINDOW_MIN_BYTES, wanted))

    # -- queries ----------------------------------------------------------------------------------

    def progress(self, now: float) -> ResyncProgress:
        """The current (or last) pass, for /status. ``set_extents``: the extents the secondary
        holds in its journaled resync set while the pass runs (it may differ there until
        RESYNC_DONE, beyond its record). Besides the whole pass, its two phases apart: comparing
        (extents the secondary sent checksums for; a match costs no send) and sending (extents
        without a checksum plus those found to differ so far, so its total grows while comparing
        goes on). Each has its own rate, hence its own ETA."""
        elapsed = max(now - self._started, 1e-9)
        rate = int(self._sent_bytes / elapsed) if self.active else 0
        compare_rate = int(self._compared_bytes / elapsed) if self.active else 0
        return ResyncProgress(self._done_bytes, self._total_bytes, rate, self.active,
                              self._compare_total_bytes, self._compared_bytes, compare_rate,
                              self._send_total_bytes, self._sent_bytes, self._passes,
                              extent_runs.count(self.pass_runs))
