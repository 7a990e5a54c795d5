"""The secondary's replication core: the durable record and in-order apply (claims 1, 9, 11-19).

Theory of operation. Messages from the primary are handled strictly in arrival order, which is
the primary's sequence order, so the image here is always a prefix of the primary's history.

Record changes are appended to the journal at once, in order. A MISS (or a RANGE) must be durable
in the journal before its data touches the image: otherwise a crash could leave data here that
the primary never wrote, in an extent the record does not cover. So every effect on the image,
and every reply, carries the journal append count it depends on, and waits in order until the
adapter's group commit (``journal_synced``) reaches it. Effects that depend on nothing recent run
at once, but never overtake an earlier waiting effect.

The durable watermark: the adapter fdatasyncs the image on a timer (``get_timer`` gives the next
deadline while anything applied is not yet durable, ``handle_timer(now)`` handles it), when the
primary asks (SYNC), and promptly for sync-mode writes; ``data_synced(seq)`` then reports
DURABLE(seq). A SYNC may name writes not here yet (the primary asks just before the miss it
sends next): the part beyond what is applied is remembered (``_sync_ahead``) and asked for again
once a write reaches it, so every SYNC read gets a DURABLE covering it, not only a timer's.
Removals are journaled without forcing a commit: losing one only leaves the record larger.

Held writes (write_runs.py, issue 15): the hot path (``write_now``) holds adjacent plain WRITEs
of one receive pass in a run the adapter writes as one ``pwritev``. A held write is not applied
yet: it counts (``applied_seq``, APPLIED, the watermark) only once its run leaves the core, in
order, either handed to the driver by the write that ends it or as the first action of the next
other input (``end_of_batch``, ``receive``, ``actions`` ...). A storage failure drops it.

A primary's session (secondary_session.py): the site's facts for its WELCOME, the reset at a
new connection, the link's liveness, and the end of the session when a write here fails
(``storage_failed``: nothing more is applied or answered until the next connection).

Resync passes and the undo log (secondary_resync.py): the resync set is journaled before the
data it covers lands, and during a pass into a consistent image each extent's old content is
saved before its first change; RESYNC_DONE_ACK answers once the end of the pass is durable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from foresync.errors import RemoteProtocolError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import format as jfmt
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.link.wire import WriteFlag
from foresync.record import runs as extent_runs
from foresync.record.predict import PREDICTORS, additions, extents_of
from foresync.replication.actions import (  # re-exported (__all__): adapters name them from here
    CloseLink,
    HashExtents,
    JournalAppend,
    LinkFailed,
    ResyncFinished,
    ResyncStarted,
    SaveUndo,
    Send,
    SyncData,
    WriteData,
    WriteRun,
    ZeroData,
)
from foresync.replication.actions import SecondaryAction as Action
from foresync.replication.admission import geometry_problems
from foresync.replication.liveness import Due, Liveness
from foresync.replication.secondary_resync import SecondaryResync, resumable
from foresync.replication.secondary_session import SecondarySession, SessionFacts
from foresync.replication.set_progress import SetProgress
from foresync.replication.write_runs import RUN_MAX_BYTES, RUN_MAX_WRITES, as_action

__all__ = [
    "Action", "CloseLink", "HashExtents", "JournalAppend", "LinkFailed", "ResyncFinished",
    "ResyncStarted", "SaveUndo", "SecondaryCore", "SecondaryStatistics", "Send", "SessionFacts",
    "SyncData", "WriteData", "WriteRun", "ZeroData", "resumable",
]

# Plain ints on the per-write path: operators on IntFlag members go through enum.py, about a
# microsecond each (profiled), several times per write.
_MISS, _DURABLE, _RESYNC = int(WriteFlag.MISS), int(WriteFlag.DURABLE), int(WriteFlag.RESYNC)
_PUNCH, _RANGE = int(WriteFlag.PUNCH), int(WriteFlag.RANGE)


@dataclass(frozen=True, slots=True)
class SecondaryStatistics:
    record_extents: int
    applied_seq: int
    durable_seq: int
    pending_ranges: int
    writes_applied: int
    bytes_applied: int
    storage_errors: int = 0
    split_brain: bool = False  # a primary's lineage diverged from ours (epochs.py)
    journal_commits: int = 0  # group commits that made new journal appends durable
    misses_received: int = 0  # MISS writes and zeroes (each journals its additions)


class SecondaryCore(SecondarySession, SecondaryResync):
    """The secondary's replication core (see the module notes). Its session handling is
    ``SecondarySession``'s (secondary_session.py), its resync and undo ``SecondaryResync``'s
    (secondary_resync.py)."""

    def __init__(self, size: int, extent_size: int, lookahead: int, volume_id: bytes,
                 state: RecordState, epoch: int = 1, faults: Faults = NO_FAULTS,
                 predictor: str = "next", watermark_interval_s: float = 0.05,
                 heartbeat_s: float = 1.0, timeout_s: float = 10.0) -> None:
        self.faults = faults
        self.watermark_interval_s = watermark_interval_s
        self._watermark_at = 0.0  # when handle_timer next makes what is applied durable
        self.now = 0.0  # the adapter's clock, as of the last input that gave it
        # The link timeout (liveness.py): the primary PINGs; we only listen.
        self._liveness = Liveness(heartbeat_s, timeout_s, pings=False,
                                  ignores_frames=faults.liveness_ignores_frames,
                                  ignores_silence=faults.link_timeout_ignored)
        self.predictor = PREDICTORS[predictor]()  # the primary mirrors it ([record] predictor)
        self.size = size
        self.extent_size = extent_size
        self.extent_count = -(-size // extent_size)
        self.lookahead = lookahead
        self.volume_id = volume_id
        self.epoch = epoch
        self.state = state
        self._actions: list[Action] = []
        self._appended = 0  # journal appends issued
        self._synced = 0  # journal appends known durable
        self.journal_commits = 0  # journal_synced calls that made new appends durable
        self.misses_received = 0
        self._pending: deque[tuple[int, int, Action | None]] = deque()  # (needs, seq, effect)
        self._earlier_needs = 0  # the append count the last effect of an earlier session waits for
        self.applied_seq = 0
        self.durable_seq = 0
        self._reported_applied = 0
        self._sync_inflight = 0  # through-seq of the SyncData in progress, 0 if none
        self._sync_wanted = 0
        self._sync_ahead = 0  # a SYNC's seq beyond what was applied when it came (see _want_sync)
        self._await_durable: deque[tuple[int, wire.Message]] = deque()  # replies needing durable data
        self._early_ranges = False  # the primary's HELLO said EARLY_RANGES: see _on_zero
        self._answered_early: set[int] = set()  # ranges answered before durably zeroed here
        self._ranges_done_later: list[int] = []  # of those, reported done before they were
        self.writes_applied = 0
        self.bytes_applied = 0
        self.greeted = False
        self.welcome_flags = 0  # wire.WelcomeFlag bits (SessionFacts)
        self.stale: tuple[int, ...] = ()  # extents to resync beyond the record (SessionFacts)
        self.checksums = False  # a full sync: CHECKSUMS follow the WELCOME (SessionFacts)
        self.resume = False  # WELCOME RESUME: the pass goes on over ``state.resync`` (SessionFacts)
        self.checksum_runs: extent_runs.Runs = ()  # the extents the checksums cover, in order
        self._progress = SetProgress(faults)  # RESYNC_PROGRESS not yet durable here
        self.resyncing = False  # a resync write has landed since the last RESYNC_DONE
        self.protect_image = False  # the image is consistent, keep undo (SessionFacts)
        self.split_brain = False  # a primary's lineage diverged from ours (``split_brain_seen``)
        self._generations: tuple[int, ...] = ()  # the session primary's (HELLO): see ResyncFinished
        self._undo_saved: dict[int, int] = {}  # extent -> the append count of its SaveUndo
        self._deferred_saves: deque[int] = deque()  # counts of SaveUndo waiting in _pending
        self.failed = False  # a write failed in this session: act on nothing until the next one
        self.storage_errors = 0
        self.failed_extents: set[int] = set()  # dropped or failed writes: stale until resynced
        # Adjacent hot-path WRITEs held, not yet applied (write_runs.py): where the next one
        # would start, and their bytes. Plain attributes: this is the per-write path.
        self._run: list[wire.Write] = []
        self._run_end = 0
        self._run_bytes = 0

    # -- inputs ----------------------------------------------------------------------------------

    def actions(self) -> list[Action]:
        if self._run:
            self._issue_run()
        out, self._actions = self._actions, []
        return out

    def receive(self, message: wire.Message, *, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        self._liveness.frame_received(self.now)
        if self._run and not self.faults.run_counted_applied_before_written:
            self._issue_run()  # the held writes came first: they go first
        if self.failed:
            return  # the session failed: nothing more is applied or answered (see storage_failed)
        match message:
            case wire.Write():
                self._on_write(message)
            case wire.Zero():
                self._on_zero(message)
            case wire.Sync(seq):
                self._want_sync(seq)
            case wire.Remove(extents, ranges_done):
                self._remove(extents)
                for seq in ranges_done:
                    if (seq in self._answered_early and seq > self.durable_seq
                            and not self.faults.range_done_before_zero_durable):
                        self._ranges_done_later.append(seq)  # see _on_zero
                    elif self.state.ranges.pop(seq, None) is not None:
                        self._append(jfmt.encode_range_done(seq))
            case wire.Ping(ts):
                self._actions.append(Send(wire.Pong(ts)))
            case wire.Verify(request, first, count):
                if first + count > self.extent_count:
                    raise RemoteProtocolError(f"VERIFY of extents {first}+{count} is outside the volume")
                self._effect(self._synced_or_pending(), self.applied_seq + 1,
                             HashExtents(request, first, count))
            case wire.ResyncSet(set_id, runs):
                self._on_resync_set(set_id, runs)
            case wire.ResyncProgress(seq, runs):
                self._on_resync_progress(seq, runs)
            case wire.ResyncDone(seq):
                self._on_resync_done(seq)
            case wire.Hello():
                self._on_hello(message)
            case _:
                raise RemoteProtocolError(f"secondary got unexpected {type(message).__name__}")

    def write_now(self, message: wire.Write, *, now: float | None = None) -> bool | list[wire.Write]:
        """The common WRITE in one call, without actions (the hot path): no flags (not a miss,
        resync or sync-mode write), no removals, nothing queued before it (no action not yet
        carried out, no effect waiting for the journal) and no undo to save. False: nothing
        changed, use ``receive()``. Otherwise the write is held, not yet applied, in a run of
        adjacent writes that is written as one (write_runs.py): True, or, when this write
        does not extend the held run, the writes of that run, which now count as applied and
        which the adapter writes at once, before anything else. The frame counts for
        liveness whichever is returned."""
        if now is not None:
            self.now = now
        self._liveness.frame_received(self.now)
        if (message.flags or message.removals or self._actions or self._pending or self.failed
                or (self.resyncing and self.protect_image) or self._sync_ahead):
            return False
        length = len(message.data)
        offset = message.offset
        if offset < 0 or offset + length > self.size:
            self._check_range(offset, length)
        run = self._run
        if self.faults.run_counted_applied_before_written:
            self._count_applied(message.seq, 1, length)  # deliberately wrong: see faults.py
        if not run or ((offset == self._run_end or self.faults.run_joins_non_adjacent_write)
                       and len(run) < RUN_MAX_WRITES and self._run_bytes + length <= RUN_MAX_BYTES):
            run.append(message)
            self._run_end = offset + length
            self._run_bytes += length
            return True
        # The held run leaves the core (``_end_run``, inline: most zipf writes take this way).
        self._run = [message]
        if not self.faults.run_counted_applied_before_written:
            seq = run[-1].seq
            if seq > self.applied_seq:
                self.applied_seq = seq
            self.writes_applied += len(run)
            self.bytes_applied += self._run_bytes
        self._run_end = offset + length
        self._run_bytes = length
        return run

    def _end_run(self) -> list[wire.Write]:
        """The held writes leave the core, in order: from now on they count as applied."""
        writes = self._run
        self._run = []
        nbytes, self._run_bytes = self._run_bytes, 0
        if not self.faults.run_counted_applied_before_written:
            self._count_applied(writes[-1].seq, len(writes), nbytes)
        return writes

    def _issue_run(self) -> None:
        """End the held run ahead of the actions the current input makes."""
        self._actions.append(as_action(self._end_run()))

    def _count_applied(self, seq: int, writes: int, nbytes: int) -> None:
        if seq > self.applied_seq:
            self.applied_seq = seq
        self.writes_applied += writes
        self.bytes_applied += nbytes
        if self._sync_ahead and seq >= self._sync_ahead:
            self._want_sync(self._sync_ahead)

    def end_of_batch(self) -> None:
        """The adapter has fed everything it read: write what it held, and report how far we
        applied (the window)."""
        if self._run:
            self._issue_run()
        self._report_applied()

    def end_of_batch_run(self) -> list[wire.Write]:
        """``end_of_batch``, but the held run comes back, counted applied, for the adapter to
        write at once, before the APPLIED this queues (``SecondaryDriver.end_of_batch``: one
        call per receive pass). None held, or actions waiting: as ``end_of_batch``."""
        run = self._run
        if not run or self._actions or self.faults.run_counted_applied_before_written:
            self.end_of_batch()
            return []
        self._run = []  # ``_end_run``, inline
        seq = run[-1].seq
        if seq > self.applied_seq:
            self.applied_seq = seq
        self.writes_applied += len(run)
        self.bytes_applied += self._run_bytes
        self._run_bytes = 0
        if not self.failed and self.applied_seq > self._reported_applied:  # _report_applied
            self._reported_applied = self.applied_seq
            self._actions.append(Send(wire.Applied(self.applied_seq)))
        return run

    def _report_applied(self) -> None:
        if self.failed:
            return
        if self.applied_seq > self._reported_applied:
            self._reported_applied = self.applied_seq
            self._actions.append(Send(wire.Applied(self.applied_seq)))

    def journal_target(self) -> int:
        """How many journal appends a sync started now would cover: never a save still waiting
        in order (``_save_undo``), or the write it protects could land before it is durable."""
        if self._deferred_saves:
            return self._deferred_saves[0] - 1
        return self._appended

    def needs_journal_sync(self) -> bool:
        return self.journal_target() > self._synced

    def journal_synced(self, through: int) -> None:
        """A group commit returned: the first ``through`` appends (the ``journal_target`` taken
        before its fdatasync) are durable. Appends made while it ran wait for the next one."""
        if self.faults.added_before_group_commit_durable:
            through = self._appended  # deliberately wrong: see faults.py
        if self._run:
            self._issue_run()
        if through > self._synced:
            self.journal_commits += 1
        self._synced = max(self._synced, through)
        self._release()

    def data_synced(self, through: int) -> None:
        if self._run:
            self._issue_run()
        self._sync_inflight = 0
        self.durable_seq = max(self.durable_seq, through)
        if not self.failed:
            self._actions.append(Send(wire.Durable(self.durable_seq)))
        if self._progress:
            self._shrink_durable()
        while self._await_durable and self._await_durable[0][0] <= self.durable_seq:
            self._actions.append(Send(self._await_durable.popleft()[1]))
        if self._answered_early:
            self._answered_early = {seq for seq in self._answered_early if seq > self.durable_seq}
        if self._ranges_done_later:
            done = [seq for seq in self._ranges_done_later if seq <= self.durable_seq]
            self._ranges_done_later = [seq for seq in self._ranges_done_later if seq > self.durable_seq]
            for seq in done:
                if self.state.ranges.pop(seq, None) is not None:
                    self._append(jfmt.encode_range_done(seq))
        if self._sync_wanted > self.durable_seq:
            self._start_sync()

    def request_durable(self) -> None:
        """The watermark timer: make what is applied durable, if anything new is."""
        if self._run:
            self._issue_run()
        self._want_sync(self.applied_seq)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None while everything applied is durable and
        no session is up: the next watermark, or the link's timeout (liveness.py). Writes still
        held (write_runs.py: the adapter fed no ``end_of_batch``) are due at once."""
        if self._run:
            return self.now
        work = self._watermark_at if self.applied_seq > self.durable_seq else None
        link = self._liveness.deadline()
        if link is None or (work is not None and work < link):
            return work
        return link

    def handle_timer(self, now: float) -> None:
        """The watermark: at most once per ``watermark_interval_s``, make what is applied
        durable (``request_durable``). And a primary silent for ``timeout_s`` is gone: end
        the link (``LinkFailed``)."""
        self.now = now
        if self._run:
            self._issue_run()
        if now >= self._watermark_at:
            self._watermark_at = now + self.watermark_interval_s
            self.request_durable()
        if self._liveness.due(now) is Due.DEAD:
            self._actions.append(LinkFailed(self._liveness.silence_reason("primary")))

    # -- handling --------------------------------------------------------------------------------

    def _on_hello(self, hello: wire.Hello) -> None:
        problems = geometry_problems(hello, self.size, self.extent_size)
        if hello.volume_id != self.volume_id:
            # Never our own identity: the peer may be a stranger (admission.py screens first).
            problems.append(f"volume identity {hello.volume_id.hex()} is not ours")
        if problems:
            code = wire.RefuseCode.STRANGER if hello.volume_id != self.volume_id else wire.RefuseCode.MISMATCH
            self._actions.append(Send(wire.Refuse("; ".join(problems), code)))
            return
        self.greeted = True
        self._early_ranges = bool(hello.flags & wire.HelloFlag.EARLY_RANGES)
        # This copy holds the data of the primary's generations only once a pass has brought it
        # all here (RESYNC_DONE): until then a promotion must meet the primary's newer generation
        # as a split brain, never fail back over the writes it names (epochs.py).
        self._generations = tuple(hello.generations or hello.history)
        ranges = tuple(sorted((seq, off, length) for seq, (off, length) in self.state.ranges.items()))
        # Pending ranges are named by the seq that created them, possibly in an earlier session
        # (both sites restarted since). The primary numbers on from what we report, so report at
        # least those seqs: a new op must never reuse one, or finishing the old range would
        # clear the new one.
        applied = max(self.applied_seq, max(self.state.ranges, default=0))
        flags = self.welcome_flags | (wire.WelcomeFlag.CHECKSUMS if self.checksums else 0)
        flags |= wire.WelcomeFlag.RESUME if self.resume else 0
        welcome = wire.Welcome(self.volume_id, self.epoch, applied,
                               tuple(sorted(self.state.extents)), ranges, flags,
                               self.stale_extents(), self.state.resync if self.resume else ())
        # Only a durable record may be reported: the primary trusts every extent in it (it may
        # drop an extent from its out-of-sync set because the record covers it), so wait for the
        # journal to commit any add still in flight.
        self._effect(self._appended, self.applied_seq + 1, Send(welcome))

    def stale_extents(self) -> tuple[int, ...]:
        """What WELCOME reports beyond the record: the adapter's stale extents, extents whose
        writes failed or were dropped here (``storage_failed``), and the resync set of a pass
        that did not finish (not listed for a new or inconsistent copy: the primary compares
        every extent of those anyway)."""
        extra = set(self.failed_extents)
        if not self.welcome_flags and self.state.resync:
            extra.update(extent_runs.expand(self.state.resync))
        if not extra:
            return self.stale
        return tuple(sorted(extra.union(self.stale)))

    def _on_write(self, message: wire.Write) -> None:
        self._check_range(message.offset, len(message.data))
        if message.flags & _RESYNC and not self.resyncing:
            self.resyncing = True
            self._effect(self._synced_or_pending(), message.seq, ResyncStarted())
        self._remove(message.removals)
        needs = self._synced_or_pending()
        reply: wire.Message | None = None
        if message.flags & _MISS:
            added = self._add(message.offset, len(message.data), message.budget)
            needs = self._appended
            reply = wire.Added(message.seq, added)
        self._effect(needs, message.seq, WriteData(message.offset, message.data, message.seq))
        if reply is not None:
            self._reply_after(needs, message.seq, reply)
        self._applied(message.seq, len(message.data), message.flags)

    def _on_zero(self, message: wire.Zero) -> None:
        self._check_range(message.offset, message.length)
        self._remove(message.removals)
        punch = bool(message.flags & _PUNCH)
        needs = self._synced_or_pending()
        if message.flags & _RANGE:
            self.state.ranges[message.seq] = (message.offset, message.length)
            self._append(jfmt.encode_range(message.seq, message.offset, message.length))
            needs = self._appended
            if self._early_ranges and not message.flags & _DURABLE:
                # Answer once the range is journaled, before zeroing it: the durable pending range
                # covers its extents here until they are durably zeroed on both sites (the
                # primary reports it done after its own flush, and it leaves the journal only
                # once our zeroing is durable too: Remove above, data_synced). So both sites
                # zero at once instead of one after the other (issue 14: build's 128 MiB trims).
                self._answered_early.add(message.seq)
                self._reply_after(needs, message.seq, wire.Added(message.seq, ()))
                self._effect(needs, message.seq, ZeroData(message.offset, message.length, punch, message.seq))
            else:
                # A sync-mode range (DURABLE), or a primary that expects it: answer only once
                # the zeroing is durable here; the primary applies it after that.
                self._effect(needs, message.seq, ZeroData(message.offset, message.length, punch, message.seq))
                self._await_durable.append((message.seq, wire.Added(message.seq, ())))
            self._applied(message.seq, 0, message.flags)
            self._want_sync(message.seq)
            return
        reply: wire.Message | None = None
        if message.flags & _MISS:
            added = self._add(message.offset, message.length, message.budget)
            needs = self._appended
            reply = wire.Added(message.seq, added)
        self._effect(needs, message.seq, ZeroData(message.offset, message.length, punch, message.seq))
        if reply is not None:
            self._reply_after(needs, message.seq, reply)
        self._applied(message.seq, 0, message.flags)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise RemoteProtocolError(f"write {offset}+{length} is outside the {self.size}-byte volume")

    def _add(self, offset: int, length: int, budget: int) -> tuple[int, ...]:
        """Add the touched extents, then predicted ones, at most ``budget`` new in all."""
        self.misses_received += 1
        touched = extents_of(offset, length, self.extent_size)
        present = self.state.extents
        needed = sum(1 for e in touched if e not in present)
        if needed > budget:
            raise RemoteProtocolError(f"miss touches {needed} new extents but the budget is {budget}")
        new = additions(self.predictor, touched, budget, self.lookahead, self.extent_count, present)
        self.predictor.observe(touched)
        if new:
            self.state.extents.update(new)
            self._append(jfmt.encode_add(new))
        return tuple(new)

    def _remove(self, extents: tuple[int, ...]) -> None:
        present = [e for e in extents if e in self.state.extents]
        if present:
            self.state.extents.difference_update(present)
            self._append(jfmt.encode_remove(present))

    def _append(self, entry: bytes) -> None:
        self._appended += 1
        self._actions.append(JournalAppend(entry))

    def _synced_or_pending(self) -> int:
        """What a plain effect depends on: nothing new, but it must not overtake waiting ones."""
        return self._pending[-1][0] if self._pending else 0

    def _effect(self, needs: int, seq: int, effect: Action) -> None:
        if isinstance(effect, WriteData):
            needs = max(needs, self._save_undo(effect.offset, len(effect.data), seq))
        elif isinstance(effect, ZeroData):
            needs = max(needs, self._save_undo(effect.offset, effect.length, seq))
        if needs <= self._synced and not self._pending:
            self._actions.append(effect)
        else:
            self._pending.append((needs, seq, effect))

    def _reply_after(self, needs: int, seq: int, reply: wire.Message) -> None:
        if self.faults.ack_miss_before_durable:
            self._actions.append(Send(reply))  # deliberately wrong: see faults.py
            return
        self._effect(needs, seq, Send(reply))

    def _release(self) -> None:
        while self._pending and self._pending[0][0] <= self._synced:
            _, _, effect = self._pending.popleft()
            if isinstance(effect, SaveUndo):
                self._deferred_saves.popleft()  # a commit from now on may cover it
            if effect is not None:
                self._actions.append(effect)
        if self._sync_wanted > self.durable_seq and not self._sync_inflight:
            self._start_sync()

    def _applied(self, seq: int, nbytes: int, flags: int) -> None:
        # "Applied" counts for the window once the effect is issued or queued in order; the
        # watermark (durable) is what eviction trusts.
        self.applied_seq = max(self.applied_seq, seq)
        self.writes_applied += 1
        self.bytes_applied += nbytes
        if flags & _DURABLE:
            self._want_sync(seq)
        if self._sync_ahead and seq >= self._sync_ahead:
            self._want_sync(self._sync_ahead)  # a SYNC that came before this write: answer it now

    def _want_sync(self, seq: int) -> None:
        """Make everything through ``seq`` durable and report DURABLE. Only what is applied can
        be synced now; a SYNC beyond it (the primary asked before sending the writes it names)
        is remembered in ``_sync_ahead`` and asked again once a write reaches it."""
        if seq > self.applied_seq:
            if not self.faults.sync_beyond_applied_dropped:  # deliberately wrong if set: faults.py
                self._sync_ahead = max(self._sync_ahead, seq)
        elif seq >= self._sync_ahead:
            self._sync_ahead = 0
        seq = min(seq, self.applied_seq)
        if seq <= self.durable_seq:
            if seq and not self.failed:
                self._actions.append(Send(wire.Durable(self.durable_seq)))
            return
        self._sync_wanted = max(self._sync_wanted, seq)
        if not self._sync_inflight:
            self._start_sync()

    def _start_sync(self) -> None:
        # Everything applied so far must be issued before the fdatasync; effects still waiting
        # on the journal are not, so the watermark stops short of them.
        through = self._pending[0][1] - 1 if self._pending else self.applied_seq
        if through <= self.durable_seq:
            return
        self._sync_inflight = through
        self._actions.append(SyncData(through))

    @property
    def quiet(self) -> bool:
        """Whether nothing is left for the adapter to do on this core's behalf: no action not
        yet taken, no held run, no effect waiting for a commit, no commit wanted, no data sync
        running. (The simulator checks that a SYNC read is answered by then.)"""
        return not (self._actions or self._run or self._pending or self._sync_inflight
                    or self.needs_journal_sync())

    def statistics(self) -> SecondaryStatistics:
        return SecondaryStatistics(len(self.state.extents), self.applied_seq, self.durable_seq,
                                   len(self.state.ranges), self.writes_applied, self.bytes_applied,
                                   self.storage_errors, self.split_brain, self.journal_commits,
                                   self.misses_received)
