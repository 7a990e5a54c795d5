"""The secondary site: link in, the pure ``SecondaryCore``, the journal and the local image out.

Group commit: after each batch of frames the site starts a journal fdatasync covering every
append made so far. Appends made while it runs get one of their own that starts beside it (at
most ``commits.MAX_IN_FLIGHT`` overlap, replication/commits.py; the journal settles overlapping
ones together, journal/journal.py), except during a resync pass, whose undo log syncs first in
each commit: then one commit at a time, as before. Image fdatasyncs for
the durable watermark run the same way, one at a time, in a worker thread.

A write that fails (the image, the journal, the undo log or site.json: a full disk) is handed to
the core (``SecondaryCore.storage_failed``), which drops what was not carried out, tells the
primary (STORAGE_FAILED) and closes the link. The primary redials; a journal commit that failed
is retried at most every ``COMMIT_RETRY_S``, so the next session starts once there is room.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import xxhash

from foresync.admin.status import ResyncReceived, SecondaryView, SiteStatistics
from foresync.config import SiteConfig, listen_error
from foresync.daemon.group_unit import group_members
from foresync.daemon.link_router import gate_one_volume
from foresync.daemon.metadata import UNDO_FILE, SiteMeta
from foresync.daemon.metadata import store as store_meta
from foresync.daemon.miss_answers import MissAnswers
from foresync.daemon.objects import OBJECT_MESSAGES, ObjectsSecondary
from foresync.daemon.results import Discarded, Promoted
from foresync.daemon.security import SiteSecurity
from foresync.daemon.transitions import (
    can_roll_back,
    failback_set,
    journal_path,
    promote_refusal,
    roll_back_then_promote,
    roll_back_unfinished_resync,
)
from foresync.daemon.transitions import discard_local as discard_local_changes
from foresync.errors import RequestRefused, StorageError, TryAgainLater
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog
from foresync.link import wire
from foresync.link.transport import LinkListener, LinkProtocol
from foresync.logctx import LogBudget
from foresync.nbd.server import bind_listener, keep_freed_heap
from foresync.record import runs as extent_runs
from foresync.replication import secondary as core_mod
from foresync.replication.actions import SecondaryAction
from foresync.replication.admission import Admitted, Identity, Refused, lineage_of, screen_hello
from foresync.replication.commits import MAX_IN_FLIGHT, CommitMarks
from foresync.replication.driver import SecondaryDriver
from foresync.replication.lease import behind_reason
from foresync.replication.resync_watch import ResyncWatch
from foresync.replication.secondary import SecondaryCore, SessionFacts, resumable
from foresync.storage.backend import ImageBackend
from foresync.units import format_size

log = logging.getLogger(__name__)
FLUSH_BEFORE_ZERO_BYTES = 1 << 20  # a zeroing this large may block the loop for milliseconds

CHECKPOINT_EVERY_ENTRIES = 20000
PROMOTE_DRAIN_S = 30.0  # a promote waits this long for the work in flight once the link is cut
COMMIT_RETRY_S = 1.0  # after a failed journal commit (a full meta disk), wait before the next
STORAGE_ERROR_LOG_S = 60.0  # the same storage failure is logged at ERROR at most this often

class _CommitFailed(Exception):
    """A group commit failed: which file, and the error."""

    def __init__(self, area: wire.StorageArea, error: StorageError) -> None:
        super().__init__(str(error))
        self.area = area
        self.error = error


_RESYNC = int(wire.WriteFlag.RESYNC)  # an int: `flags & IntFlag` goes through enum.py (0.8 against 0.05 us)

class SecondarySite:
    def __init__(self, cfg: SiteConfig, meta: SiteMeta, backend: ImageBackend,
                 journal: RecordJournal | None, security: SiteSecurity | None = None) -> None:
        self.cfg = cfg
        self.security = security or SiteSecurity.plain()
        self.meta = meta
        self.backend = backend
        self.journal = journal
        # The link decoder makes payload-sized buffers per frame, as the NBD parser does on the
        # primary: without this, 1 MiB writes spent over 40% of the secondary's CPU faulting
        # freshly returned heap back in (profiled with perf).
        keep_freed_heap()
        state = journal.replayed.state if journal is not None else None
        self.core = SecondaryCore(cfg.size, cfg.extent_size, cfg.lookahead,
                                  meta.volume_id or bytes(16),
                                  state if state is not None else RecordState(), epoch=meta.epoch,
                                  predictor=cfg.predictor,
                                  watermark_interval_s=cfg.watermark_interval_s,
                                  heartbeat_s=cfg.heartbeat_s, timeout_s=cfg.timeout_s)
        self.link: LinkProtocol | None = None
        self.link_error = ""
        self.disconnected_since: float | None = time.time()
        self._driver = SecondaryDriver(self.core, self)
        self._timer_idle = False  # the timer sleeps with no deadline from the core
        self._timer_changed = asyncio.Event()
        self._commits = CommitMarks()  # journal commits in flight (their start marks)
        self.miss_answers = MissAnswers()  # the secondary's share of each miss's trip
        self._commit_retry_at = 0.0  # monotonic: no journal commit before (after a failed one)
        self.storage_error = ""  # the last failure to write, until a resync pass completes
        self._storage_error_logged = ("", 0.0)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: LinkListener | None = None
        self.undo = UndoLog(os.path.join(cfg.meta, UNDO_FILE))
        self.rolled_back = 0
        self._roll_back_if_needed()
        self.role_changed = asyncio.Event()
        self._promoting = False
        # This side's view of a resync pass (issue 17): its total from the resync sets, what
        # arrived, rates and the sweep position (replication/resync_watch.py).
        self._resync_watch = ResyncWatch(size=cfg.size, extent_size=cfg.extent_size)
        self._resync_full = False  # the pass compares every extent (checksums were sent)
        # [nbd] listen, bound by a promote for the primary
        self.nbd_sockets: list[socket.socket] | None = None
        # [[volume]] tables (issue 16): the daemon's NBD listener is up already (a promote binds
        # nothing), and its link listener hands us our volume's connections (``adopt_link``).
        self.nbd_shared = False
        self.shared_link_listener = False
        self.on_serving: Callable[[], None] = lambda: None  # called once the link listener is up
        # Called at each link edge (up or down), so /events misses no flap between its samples.
        self.on_state_change: Callable[[], None] = lambda: None
        self._link_up_seen = False
        self._refusals = LogBudget(log, logging.WARNING, "refused link HELLOs")
        self.objects = ObjectsSecondary(cfg, self.send) if cfg.s3_listen is not None else None

    # -- link -----------------------------------------------------------------------------------

    def _new_link(self) -> LinkProtocol:
        proto = LinkProtocol(lambda m: self._on_message(proto, m), self._end_of_batch,
                             self.security.link, dialler=False, on_error=self._link_refused)
        gate_one_volume(proto, self.cfg.name, lambda m: self._on_message(proto, m),
                        self._end_of_batch, self._link_refused)
        return proto

    def adopt_link(self, proto: LinkProtocol) -> None:
        """A connection the daemon's link listener routed to our volume: as from our own."""
        proto.rebind(lambda m: self._on_message(proto, m), self._end_of_batch, self._link_refused)

    def link_refused(self, reason: str) -> None:
        """A connection to the daemon's link listener failed before it named a volume."""
        self._link_refused(reason)

    def _link_refused(self, reason: str) -> None:
        if self.link is not None and self.link.is_open:
            return  # a stranger's failed attempt must not hide the healthy link's state (logged)
        self.link_error = f"refused the primary: {reason}"

    def _on_message(self, proto: LinkProtocol, message: wire.Message) -> None:
        if proto is not self.link:
            if not isinstance(message, wire.Hello):
                proto.abort("first message was not HELLO")
                return
            if self._promoting or self.role_changed.is_set():
                proto.abort("this site is changing role")
                return
            # Screened on its own connection first: a HELLO we refuse (a stranger, another
            # volume, an outdated primary) must not drop the current primary's link.
            verdict = screen_hello(message, self._identity())
            if isinstance(verdict, Refused):
                self._refuse_hello(proto, verdict)
                return
            self._take_over(proto)
            self._accept_hello(message, verdict)
            full = bool(self._welcome_flags())
            if full and not self._land_earlier_writes(proto):
                return
            self._prepare_welcome(full, message)
            if full:
                # The core takes the HELLO below (the WELCOME goes out) before the first chunk.
                self._spawn(self._stream_checksums(proto))
        if isinstance(message, OBJECT_MESSAGES):
            if self.objects is None:
                log.error("link: the primary mirrors objects but this site's config %s has no "
                          "[s3] section; add one (as on the primary) and restart", self.cfg.path)
                proto.abort("objects from the primary, but no [s3] here")
                return
            self.core.frame_received(proto.last_rx)
            self.objects.receive(message)  # applied in order by its own worker (daemon/objects.py)
            return
        if type(message) is wire.Write and message.flags & _RESYNC:
            self._resync_watch.received(message.offset, len(message.data), proto.last_rx)
        elif type(message) is wire.ResyncSet:
            self._resync_watch.set_received(message.runs)
        # The frame's arrival time for the link timeout: when its bytes were read (no clock
        # read per 4 KiB write).
        now = proto.last_rx
        self.miss_answers.read(message, now)
        if type(message) is wire.Write and self._driver.write_now(message, now):
            return  # written at once: nothing was queued before it
        # Carried out at the end of the batch (_end_of_batch), in order, with the actions of
        # every other message read in the same pass: one pump per read, not per 4 KiB write.
        self.core.receive(message, now=now)

    def _land_earlier_writes(self, proto: LinkProtocol) -> bool:
        """Before a full sync's checksums: every write from an earlier session lands first (an
        old write landing on an extent after it was hashed could undo what the primary found
        identical). False if the journal could not commit (the connection then ends)."""
        try:
            if self.journal is not None:
                self.journal.commit(self.journal.appended)
                self.core.journal_synced(self.journal.appended)
                self.pump()
        except StorageError as exc:  # a full disk: this connection ends; the primary redials
            if proto is self.link:
                self._storage_failed(wire.StorageArea.JOURNAL, exc, ())
            return False
        return True

    async def _stream_checksums(self, proto: LinkProtocol) -> None:
        """A full sync: hash the image in chunks, in a worker thread, and stream each behind the
        WELCOME (CHECKSUMS) while the session runs: the primary compares a chunk as soon as it
        arrives, the loop keeps answering pings, and no single frame grows with the volume."""
        loop = asyncio.get_running_loop()
        size = self.cfg.extent_size
        runs = self.core.checksum_runs  # every extent, or what is left of an interrupted pass
        self._resync_full = True
        log.info("streaming checksums of %d extents for a full sync (%s)", extent_runs.count(runs),
                 "resumed pass" if self.core.resume else "new copy" if self.meta.new else "interrupted resync")
        chunks = ((first, min(wire.CHECKSUM_CHUNK_EXTENTS, run_first + run_count - first))
                  for run_first, run_count in runs
                  for first in range(run_first, run_first + run_count, wire.CHECKSUM_CHUNK_EXTENTS))
        for first, n in chunks:
            try:
                hashes = await loop.run_in_executor(None, extent_hashes, self.backend, size, first, n)
            except StorageError as exc:
                if proto is self.link and not proto.closed.done():
                    self._storage_failed(wire.StorageArea.IMAGE, exc, ())
                return
            if proto is not self.link or proto.closed.done():
                return  # that connection is gone (a promote aborts it); a newer one hashes anew
            self.core.send_checksums(first, hashes)
            self.pump()

    def _identity(self) -> Identity:
        group = self.cfg.group
        return Identity(self.meta.volume_id, self.cfg.size, self.cfg.extent_size,
                        self.meta.epoch_history, self.meta.discard_local, self.meta.lineage.data,
                        group.name if group is not None else "", group_members(group))

    def _has_healthy_link(self) -> bool:
        """A primary that passed screening is connected (greeted, or its WELCOME is still being
        prepared)."""
        return self.link is not None and self.link.is_open

    def _refuse_hello(self, proto: LinkProtocol, verdict: Refused) -> None:
        """Answer a refused HELLO on its own connection; the current session is untouched."""
        healthy = self._has_healthy_link()
        if not healthy:
            # Only while no primary is connected is this the news /status should show; a
            # stranger's refusal must not hide the healthy link's state (it is logged).
            self.link_error = f"refused the primary: {verdict.reason}"
            if verdict.split_brain:
                self.core.split_brain_seen(True)
        self._refusals("link: refused %s %s: %s", "a HELLO from" if healthy else "the primary at",
                       proto.peer, verdict.detail)
        proto.send(wire.Refuse(verdict.reason, verdict.code))
        proto.close_after_flush()

    def _accept_hello(self, hello: wire.Hello, verdict: Admitted) -> None:
        """The new primary passed ``screen_hello``: take its identity or history as needed."""
        if verdict.adopt_identity:
            self._adopt_identity(hello)
        elif verdict.adopt_history:
            if self.meta.discard_local:
                log.warning("discarding local changes: adopting the primary's lineage (epoch %d)",
                            len(hello.history))
                self.core.split_brain_seen(False)
            # The epochs now; the data generations once a pass brings their data (ResyncFinished),
            # and until then a discarding site goes on admitting the primary it follows.
            self._store(self.meta.update(epoch_history=lineage_of(hello).epochs,
                                         generations=self.meta.lineage.data))

    def _roll_back_if_needed(self) -> None:
        """A resync into this site did not finish: restore the image from before it (claim 8's
        failback must start from a consistent copy), and mark what was restored stale."""
        if not os.path.exists(self.undo.path):
            return
        if self.meta.consistent or self.meta.new:
            self.undo.discard()  # a leftover from a pass that did finish, or nothing to protect
            return
        # A damaged undo log leaves the site inconsistent with every extent in doubt (issue 12).
        self.meta, self.rolled_back = roll_back_unfinished_resync(self.cfg, self.meta, self.backend,
                                                                  self.undo)

    def _welcome_flags(self) -> int:
        flags = 0
        if self.meta.new:
            flags |= wire.WelcomeFlag.NEW
        if not self.meta.consistent:
            flags |= wire.WelcomeFlag.INCONSISTENT
        return flags

    def _prepare_welcome(self, checksums: bool, hello: wire.Hello) -> None:
        flags = self._welcome_flags()
        # Keep undo during the next resync while the image is consistent, and also while an
        # unfinished pass's undo log is still open here (the link dropped mid-pass, this process
        # lived on): the new pass continues it, so a rollback still returns to the image from
        # before the first pass rather than leaving the extents the new pass changed.
        resuming = not self.meta.new and os.path.exists(self.undo.path)
        # An interrupted pass resumes over what its journaled set has left, unless the metadata
        # is in doubt (then every extent is compared).
        self.core.session_started(SessionFacts(flags, self.meta.stale, self.meta.epoch, checksums,
                                               resume=resumable(hello, bool(self.meta.metadata_damage)),
                                               protect_image=not flags or resuming))

    def _store(self, meta: SiteMeta) -> None:
        self.meta = meta
        store_meta(self.cfg.meta, meta)

    def _take_over(self, proto: LinkProtocol) -> None:
        # Whatever the core already released belongs to the old connection: carry it out (its
        # replies go to the old link, if anywhere) before the session is reset for the new one.
        self.pump()
        if self.link is not None:
            self.link.abort("replaced by a new connection from the primary")
        self.link = proto
        self.core.session_reset(now=time.monotonic())
        self._resync_watch.session_started()
        self.disconnected_since = None
        log.info("link: primary connected from %s", proto.peer)
        watcher = asyncio.ensure_future(self._watch(proto))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)

    async def _watch(self, proto: LinkProtocol) -> None:
        reason = await proto.closed
        if self.link is proto:
            self.link = None
            self.core.session_ended()
            self.miss_answers.session_ended()
            self.disconnected_since = time.time()
            if self.core.greeted or not self.link_error.startswith("refused"):
                self.link_error = reason  # keep why we refused: the primary just hangs up
            # Link loss is a WARNING (issue 17), except when this site ends it to change role.
            log.log(logging.INFO if self._promoting else logging.WARNING,
                    "link: primary disconnected (%s)", reason)
            self.pump()  # writes its last pass held, if it ended without end_of_batch (damage)
            self._note_link()

    def _adopt_identity(self, hello: wire.Hello) -> None:
        self._store(self.meta.with_lineage(lineage_of(hello)).update(
            volume_id=hello.volume_id, new=True, consistent=False))
        self.journal = RecordJournal.create(journal_path(self.cfg), hello.volume_id)
        self.core.adopt_volume(hello.volume_id)
        log.info("adopted volume identity %s from the primary; a full sync follows "
                 "(extents whose checksums match are skipped)", hello.volume_id.hex())

    def _end_of_batch(self) -> None:
        self._driver.end_of_batch()
        self.pump()  # starts the group commit too (_maybe_commit): once per pass, not twice

    # -- actions ----------------------------------------------------------------------------------

    def pump(self) -> None:
        self._driver()
        self._maybe_commit()
        self._wake_timer()
        self._note_link()

    def _note_link(self) -> None:
        if self.primary_connected != self._link_up_seen:
            self._link_up_seen = not self._link_up_seen
            self.on_state_change()

    def _wake_timer(self) -> None:
        """A timer sleeping with no deadline re-reads them once there is one."""
        if self._timer_idle and (self.core.get_timer() is not None or self._commit_retry() is not None):
            self._timer_idle = False
            self._timer_changed.set()

    # -- the effects of core actions (replication/driver.py dispatches them) --------------------------

    def send(self, message: wire.Message) -> None:
        if isinstance(message, wire.Refuse):
            self.link_error = f"refused the primary: {message.reason}"
            log.warning("link: %s", self.link_error)
        elif type(message) is wire.Added:
            self.miss_answers.sent(message)
        if self.link is not None:
            self.link.send(message)

    def journal_append(self, entry: bytes) -> None:
        assert self.journal is not None
        self.journal.append(entry)

    def write_data(self, offset: int, data: bytes, seq: int) -> None:
        self.backend.write(offset, data)

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        # One pwritev on a FileBackend, and on a group's member when the run lies inside it.
        self.backend.write_parts(writes[0].offset, [write.data for write in writes])

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None:
        if self.link is not None and length >= FLUSH_BEFORE_ZERO_BYTES:
            # A RANGE's ADDED goes out before its zeroing (EARLY_RANGES): send it now, so the
            # primary zeroes its copy while we zero ours, instead of after every zeroing of
            # this pass (punching 128 MiB took 40-80 ms here, issue 14).
            self.link.flush_now()
        self.backend.zero(offset, length, punch, False)

    def sync_data(self, through: int) -> None:
        self._spawn(self._sync_data(through))

    def hash_extents(self, request: int, first: int, count: int) -> None:
        size = self.cfg.extent_size
        hashes = tuple(
            xxhash.xxh3_64_intdigest(self.backend.read(e * size, min(size, self.cfg.size - e * size)))
            for e in range(first, first + count))
        if self.link is not None:
            self.link.send(wire.Hashes(request, first, hashes))

    def resync_started(self) -> None:
        if self.meta.consistent:
            # Durable before the first resync write lands: from here until RESYNC_DONE this
            # image mixes old and new data and must not be promoted unforced.
            self._store(self.meta.update(consistent=False))
            log.info("resync started: this copy is inconsistent until it finishes")

    def save_undo(self, extent: int) -> None:
        size = self.cfg.extent_size
        self.undo.append(extent, self.backend.read(extent * size, min(size, self.cfg.size - extent * size)))

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        self.backend.flush()
        if self.meta.metadata_damage:
            log.warning("a full compare finished: this copy is consistent again and the "
                        "damaged metadata (%s) is no longer in doubt", self.meta.metadata_damage)
        # The pass brought the primary's data: now its data generations are ours (epochs.py).
        self._store(self.meta.update(consistent=True, new=False, stale=(), metadata_damage="",
                                     generations=generations or self.meta.lineage.data,
                                     discard_local=False))
        self.undo.discard()
        self.storage_error = ""
        log.info("resync finished: this copy is consistent; %s received",
                 format_size(self._resync_watch.received_bytes))
        self._resync_watch.finished(self._resync_full, self.core.state.resync)
        self._resync_full = False

    def link_failed(self, reason: str) -> None:
        """The core ended a silent link (liveness.py): abort it; ``_watch`` logs the reason."""
        if self.link is not None:
            self.link.abort(reason)

    def close_link(self, reason: str) -> None:
        if self.link is not None:
            self.link_error = reason
            self.link.close_after_flush(reason)

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        """Writing ``area`` failed: say so in /status and the log (the driver tells the core,
        which drops what is not done and ends the session)."""
        self.storage_error = f"could not write its {area.label}: {error}"
        text, at = self._storage_error_logged
        now = time.monotonic()
        if self.storage_error != text or now - at >= STORAGE_ERROR_LOG_S:
            self._storage_error_logged = (self.storage_error, now)
            log.error("this site %s; the primary is told and the link closed: the primary keeps "
                      "what may differ out of sync and resyncs it once writes succeed here again",
                      self.storage_error)
        else:
            log.debug("this site %s", self.storage_error)

    def _storage_failed(self, area: wire.StorageArea, exc: StorageError,
                        unfinished: Sequence[SecondaryAction] = ()) -> None:
        self._driver.storage_failed(area, exc, unfinished)
        self.pump()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _maybe_commit(self) -> None:
        if (not self.core.needs_journal_sync() or self.journal is None
                or time.monotonic() < self._commit_retry_at):
            return
        # Overlap only while no resync pass has an undo log: its sync is not settled with the
        # journal's, so a second commit could return before the first's undo entries are durable.
        limit = 1 if self.undo.in_use() else MAX_IN_FLIGHT
        target = self.core.journal_target()
        if not self._commits.may_start(target, limit):
            return
        self._commits.start(target)
        self._spawn(self._commit(target))

    async def _commit(self, target: int) -> None:
        journal = self.journal
        assert journal is not None
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._commit_both, journal, target)
        except _CommitFailed as failed:
            self._commits.failed(target)
            self._commit_retry_at = time.monotonic() + COMMIT_RETRY_S
            self._storage_failed(failed.area, failed.error, ())
            self._wake_timer()  # a failed commit is retried at _commit_retry_at
            return
        except BaseException:
            self._commits.failed(target)
            raise
        self.core.journal_synced(self._commits.returned(target))
        self.pump()  # starts the next commit, if appends wait for one
        if (journal.entries_since_checkpoint > CHECKPOINT_EVERY_ENTRIES and not self._commits
                and not self.core.needs_journal_sync() and journal is self.journal):
            try:
                journal.checkpoint(self.core.state)
            except OSError as exc:  # the journal stays as it was, only longer
                log.warning("journal checkpoint failed (%s); trying again later", exc)

    def _commit_both(self, journal: RecordJournal, target: int) -> None:
        try:
            self.undo.sync()  # old contents first: the writes they protect wait for this commit
        except StorageError as exc:
            raise _CommitFailed(wire.StorageArea.UNDO, exc) from exc
        try:
            journal.commit(target)
        except StorageError as exc:
            raise _CommitFailed(wire.StorageArea.JOURNAL, exc) from exc

    async def _sync_data(self, through: int) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.backend.flush)
        except StorageError as exc:
            self._storage_failed(wire.StorageArea.IMAGE, exc, (core_mod.SyncData(through),))
            return
        self.core.data_synced(through)
        self.pump()

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> str:
        """Serve until ``stop`` ("stop") or a promotion ("primary")."""
        host, port = self.cfg.link_listen
        if not self.shared_link_listener:
            self._server = LinkListener(self._new_link, self.security.link, self._link_refused)
            try:
                await self._server.start(host, port)
            except OSError as exc:
                raise listen_error("[link] listen", self.cfg.link_listen, exc) from None
        log.info("secondary listening for the primary on %s:%d", host, port)
        self.on_serving()
        if self.objects is not None:
            self.objects.start()
        await self._timers(stop)
        if self.objects is not None:
            await self.objects.aclose()
        try:
            await self._shutdown()
        except (OSError, StorageError) as exc:
            error = exc if isinstance(exc, StorageError) else StorageError(
                f"cannot commit the record journal in {self.cfg.meta}: {exc.strerror or exc}",
                exc.errno or errno.EIO)
            log.error("clean stop failed: %s", error)
            raise error from None
        return "primary" if self.role_changed.is_set() else "stop"

    async def _timers(self, stop: asyncio.Event) -> None:
        """Until ``stop`` or a promotion: sleep until the core's next deadline (``get_timer``:
        the watermark, the link's timeout), then handle it. A pump that gives an idle core work
        wakes the sleep early."""
        ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.role_changed.wait())]
        try:
            while not stop.is_set() and not self.role_changed.is_set():
                now = time.monotonic()
                deadlines = [at for at in (self.core.get_timer(), self._commit_retry()) if at is not None]
                self._timer_idle = not deadlines
                self._timer_changed.clear()
                woken = asyncio.ensure_future(self._timer_changed.wait())
                await asyncio.wait([*ended, woken],
                                   timeout=max(0.0, min(deadlines) - now) if deadlines else None,
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                self._timer_idle = False
                self.core.handle_timer(time.monotonic())
                self.pump()
        finally:
            for task in ended:
                task.cancel()

    def _commit_retry(self) -> float | None:
        """When a journal commit that failed (a full meta disk) is tried again, if one waits."""
        if self._commits or not self.core.needs_journal_sync() or self.journal is None:
            return None
        return self._commit_retry_at

    @property
    def primary_connected(self) -> bool:
        """A primary's HELLO was accepted on a link that is still open."""
        return self.link is not None and self.link.is_open and self.core.greeted

    async def promote(self, force: bool, epoch_id: int | None = None,
                      lease_expired: bool = False) -> Promoted:
        """Failover (claim 7): become the primary of a new epoch.

        Every refusal comes first and changes nothing, a taken NBD port included (bound now and
        handed to the primary, so the new primary cannot then fail to serve). Then: the link is
        cut, so nothing new arrives; the work in flight is waited for (bounded: a resync that
        keeps feeding a commit loop, or the checksums of a full sync, made this wait for 90 s
        and more); an unfinished resync is rolled back to the copy from before it; and only then
        is the new role written. A refusal raises ``RequestRefused`` (``TryAgainLater`` if the
        wait ran out), with nothing changed. With [cluster] (daemon/cluster.py) etcd gave the
        ``epoch_id``, and ``lease_expired``: the old primary fenced itself, connected or not."""
        if self._promoting or self.role_changed.is_set():
            raise RequestRefused("a promote is already under way")
        if self.primary_connected and not force and not lease_expired:
            raise RequestRefused("the primary is still connected; promoting now would make two "
                                 "primaries (use --force if it is really gone)")
        if self.meta.volume_id is None:
            raise RequestRefused("this site has never connected to a primary: it has no volume")
        refusal = promote_refusal(self.meta, force, can_roll_back(self.meta, self.undo))
        if not refusal and lease_expired:  # the lease's own rule, checked again on the state now
            refusal = behind_reason(len(self.meta.stale), can_roll_back(self.meta, self.undo))
        if refusal:
            raise RequestRefused(refusal)
        host, port = self.cfg.nbd_listen
        try:
            nbd_sockets = [] if self.nbd_shared else bind_listener(host, port)
        except OSError as exc:
            raise RequestRefused(f"cannot serve NBD on {host}:{port} ([nbd] listen): "
                                 f"{exc.strerror or exc}; still secondary, nothing changed") from None
        self._promoting = True  # refuse the old primary from here on (fencing its epoch)
        try:
            answer = await self._promote_now(force, epoch_id)
        except BaseException:
            _close_all(nbd_sockets)
            self._promoting = False
            raise
        self.nbd_sockets = nbd_sockets
        # Only now, with the new role on disk, may run() return and the daemon reload it.
        self.role_changed.set()
        return answer

    async def _promote_now(self, force: bool, epoch_id: int | None = None) -> Promoted:
        if self.link is not None:
            self.link.abort("promoted: this site no longer accepts the old primary's writes")
        if not await self._drain(PROMOTE_DRAIN_S):
            raise TryAgainLater(f"work in flight (journal commits, image syncs) did not finish "
                                f"within {PROMOTE_DRAIN_S:g} s of cutting the link; still "
                                "secondary: try again")
        assert self.journal is not None
        done = roll_back_then_promote(self.cfg, self.meta, self.core.state, lambda: self.backend,
                                      self.undo, force, epoch_id)
        self.meta = done.meta
        if done.restored is not None:
            self.rolled_back = done.restored
        return done.result(self.cfg)

    async def discard_local(self) -> Discarded:
        """`resolve --discard-local` on a secondary: accept the next primary's history even if
        it diverged, and have it copy back everything this site may hold differently."""
        extra = failback_set(self.cfg, self.meta, self.core.state)
        self.meta = discard_local_changes(self.cfg, self.meta, extra)
        self.core.split_brain_seen(False)
        if self.journal is not None:
            self.journal.close()
        self.journal = RecordJournal.open(journal_path(self.cfg))
        self.core.restart_record(self.journal.replayed.state)
        return Discarded(len(self.meta.stale))

    async def _drain(self, timeout_s: float | None = None) -> bool:
        """Wait for every task in flight (commits, syncs, checksums, link watchers), then commit
        the journal and flush the image; False, with nothing committed, if tasks still ran
        after ``timeout_s``. ``asyncio.wait``, not ``gather``: a cancelled caller must never
        cancel these tasks (a cancelled link watcher left the site counting a primary long
        gone as connected, so a normal promote was refused)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while pending := [task for task in self._tasks if not task.done()]:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                log.warning("%d tasks still running after %.0f s: %s", len(pending), timeout_s, pending)
                return False
            await asyncio.wait(pending, timeout=remaining)
        if self.journal is not None:
            self.journal.commit(self.journal.appended)
            self.core.journal_synced(self.journal.appended)
            self.pump()
        self.backend.flush()
        return True

    async def _shutdown(self) -> None:
        log.info("stopping: committing the journal and flushing the image")
        if self._server is not None:
            self._server.close()
        if self.link is not None:
            self.link.abort("secondary shutting down")
        await self._drain()
        if self.journal is not None:
            try:
                self.journal.checkpoint(self.core.state)
            except OSError as exc:
                # Everything it would compact is committed already, and a failed checkpoint
                # leaves the journal as it was: nothing is lost, but the operator must know.
                raise StorageError(f"cannot write the record checkpoint for {self.journal.path} "
                                   f"(the journal itself is intact): {exc.strerror or exc}",
                                   exc.errno or errno.EIO) from None
            finally:
                self.journal.close()

    def statistics(self) -> SiteStatistics:
        """A snapshot for /status and /metrics (``admin.status``)."""
        s = self.core.statistics()
        connected = self.primary_connected  # HELLO accepted, not refused, link still open
        consistent = self.meta.consistent and not self.meta.new
        return SiteStatistics(
            epoch=self.meta.epoch, mode=self.cfg.mode.value,
            link=("connected" if connected else "handshake" if self.link is not None and self.link.is_open
                  else "disconnected"),
            link_error=self.link_error,
            # Never while this copy is being fully compared or resynced (issue 12).
            in_sync=(connected and s.applied_seq == s.durable_seq and not self.core.needs_journal_sync()
                     and consistent and not self.meta.metadata_damage),
            record_extents=s.record_extents, record_capacity=self.cfg.capacity,
            extent_size_bytes=self.cfg.extent_size, writes=s.writes_applied,
            storage_errors=s.storage_errors, split_brain=s.split_brain,
            security=self.security.describe(),
            view=SecondaryView(
                core=s, resync=self._resync_view(consistent), storage_error=self.storage_error,
                disconnected_since=self.disconnected_since,
                worst_case_divergence_bytes=((s.record_extents + extent_runs.count(self.core.state.resync))
                                             * self.cfg.extent_size),
                consistent=consistent, metadata_damage=self.meta.metadata_damage,
                undo_saved_extents=self.undo.saved, rolled_back_extents=self.rolled_back,
                record_may_be_incomplete=self.link is None,
                journal_commits_overlapped=self._commits.overlapped,
                misses_added=self.miss_answers.answered, miss_added_s=self.miss_answers.seconds))

    def _resync_view(self, consistent: bool) -> ResyncReceived:
        """The resync pass from this side (resync_watch.py). Active while this copy waits for
        a pass to finish."""
        active = not consistent or self.core.resyncing
        watch, runs, full = self._resync_watch, self.core.state.resync, self._resync_full and active
        progress = watch.progress(active=active, set_runs=runs, full=full, now=time.monotonic())
        return ResyncReceived(active, watch.received_bytes, progress.rate_bytes_per_s,
                              full, progress, watch.total_known(runs, full))


def extent_hashes(backend: ImageBackend, extent_size: int, first: int, count: int) -> tuple[int, ...]:
    """xxh3 of extents ``first``.. ``first + count - 1`` of the image (runs in a worker); holes
    are hashed without reading them."""
    zero_hash = xxhash.xxh3_64_intdigest(bytes(extent_size))
    hashes = []
    for offset in range(first * extent_size, min(backend.size, (first + count) * extent_size), extent_size):
        length = min(extent_size, backend.size - offset)
        status = backend.extents(offset, length)
        if len(status) == 1 and status[0][1] & 1 and status[0][0] >= length:
            hashes.append(zero_hash if length == extent_size else xxhash.xxh3_64_intdigest(bytes(length)))
        else:
            hashes.append(xxhash.xxh3_64_intdigest(backend.read(offset, length)))
    return tuple(hashes)


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
