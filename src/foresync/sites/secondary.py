"""The secondary site: link in, the pure ``SecondaryCore``, the journal and the local image out.

Group commit: after each batch of frames the site starts at most one journal fdatasync, covering
every append made so far; appends made while it runs wait for the next one. Image fdatasyncs for
the durable watermark run the same way, one at a time, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import xxhash

from foresync.config import SiteConfig
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog, roll_back
from foresync.link import wire
from foresync.nbd.server import keep_freed_heap
from foresync.replication import secondary as core_mod
from foresync.replication.roles import Relation, compare
from foresync.replication.secondary import SecondaryCore
from foresync.site import UNDO_FILE, SiteMeta
from foresync.site import store as store_meta
from foresync.sites.link import ActionPump, LinkListener, LinkProtocol
from foresync.sites.roles import discard_local as discard_local_changes
from foresync.sites.roles import failback_set, journal_path
from foresync.sites.roles import promote as promote_site
from foresync.sites.security import SiteSecurity
from foresync.storage.file_backend import FileBackend

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENTRIES = 20000


class SecondarySite:
    def __init__(self, cfg: SiteConfig, meta: SiteMeta, backend: FileBackend,
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
                                  predictor=cfg.predictor)
        self.link: LinkProtocol | None = None
        self.link_error = ""
        self.disconnected_since: float | None = time.time()
        self._pump = ActionPump(lambda: self.core.actions(), self._do)
        self._committing = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: LinkListener | None = None
        self.undo = UndoLog(os.path.join(cfg.meta, UNDO_FILE))
        self.rolled_back = 0
        self._roll_back_if_needed()
        self.role_changed = asyncio.Event()
        self._promoting = False
        self.split_brain = False
        self._held: list[wire.Message] | None = None  # messages waiting for full-sync checksums

    # -- link -----------------------------------------------------------------------------------

    def _new_link(self) -> LinkProtocol:
        proto = LinkProtocol(lambda m: self._on_message(proto, m), self._end_of_batch,
                             self.security.link, dialler=False, on_error=self._link_refused)
        return proto

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
            self._take_over(proto)
            self._adopt_identity(message)
            if not self._check_history(message):
                return
            if self._welcome_flags():
                # Checksums of the whole image for a full sync: read in a worker thread so the
                # link stays alive (pings answered) however big the volume is.
                self._held = [message]
                self._spawn(self._hash_then_welcome(proto))
                return
            self._prepare_welcome(())
        if self._held is not None:
            if isinstance(message, wire.Ping):
                # Checksumming a big volume takes a while: keep the link alive meanwhile.
                proto.send(wire.Pong(message.timestamp_ns))
                return
            self._held.append(message)
            return
        if type(message) is wire.Write and not self._pump.running and self.core.write_now(message):
            self.backend.write(message.offset, message.data)  # nothing is queued before it
            return
        # Carried out at the end of the batch (_end_of_batch), in order, with the actions of
        # every other message read in the same pass: one pump per read, not per 4 KiB write.
        self.core.receive(message)

    async def _hash_then_welcome(self, proto: LinkProtocol) -> None:
        # Every write from an earlier session lands first, so the checksums describe the image
        # the primary will compare against.
        if self.journal is not None:
            self.journal.commit(self.journal.appended)
            self.core.journal_synced(self.journal.appended)
            self.pump()
        loop = asyncio.get_running_loop()
        hashes = await loop.run_in_executor(None, extent_hashes, self.backend, self.cfg.extent_size)
        if proto is not self.link:
            return  # that connection is gone; a newer one computes its own
        held, self._held = self._held or [], None
        self._prepare_welcome(hashes)
        log.info("reporting checksums of %d extents for a full sync (%s)", len(hashes),
                 "new copy" if self.meta.new else "interrupted resync")
        for message in held:
            self.core.receive(message)
        self.pump()

    def _refuse(self, reason: str) -> bool:
        self.link_error = f"refused the primary: {reason}"
        log.warning("link: %s", self.link_error)
        if self.link is not None:
            self.link.send(wire.Refuse(reason))
            self.link.close_after_flush()
        return False

    def _check_history(self, hello: wire.Hello) -> bool:
        """Decide from the two epoch histories whether this primary may replicate to us."""
        if self.meta.volume_id is not None and hello.volume_id != self.meta.volume_id:
            # Another volume altogether (a primary re-initialised, a wrong peer address): its
            # history is unrelated to ours, and calling that a split brain would mislead.
            return self._refuse(
                f"volume identity {hello.volume_id.hex()} is not ours ({self.meta.volume_id.hex()}); "
                "to pair this site with that volume instead, re-initialise it with "
                "`foresync init --force`")
        mine, theirs = self.meta.epoch_history, tuple(hello.history)
        relation = compare(mine, theirs)
        if self.meta.discard_local and relation is not Relation.SAME:
            log.warning("discarding local changes: adopting the primary's epoch history (epoch %d)",
                        len(theirs))
            self._store(self.meta.update(epoch_history=theirs, discard_local=False))
            self.split_brain = False
            return True
        if relation is Relation.SAME:
            return True
        if relation is Relation.PEER_NEWER or not mine:
            self._store(self.meta.update(epoch_history=theirs))
            return True
        if relation is Relation.PEER_OLDER:
            return self._refuse(
                f"its epoch history (epoch {len(theirs)}) is older than ours (epoch {len(mine)}): "
                "it is an outdated primary and must become secondary")
        self.split_brain = True
        return self._refuse(
            f"split brain: epoch histories diverged (ours epoch {len(mine)}, theirs epoch "
            f"{len(theirs)}); run `foresync resolve --discard-local` on the site whose changes "
            "should be thrown away")

    def _roll_back_if_needed(self) -> None:
        """A resync into this site did not finish: restore the image from before it (claim 8's
        failback must start from a consistent copy), and mark what was restored stale."""
        if not os.path.exists(self.undo.path):
            return
        if self.meta.consistent or self.meta.new:
            self.undo.discard()  # a leftover from a pass that did finish, or nothing to protect
            return
        restored = roll_back(self.undo.path, self.backend.write, self.backend.flush, self.cfg.extent_size)
        self._store(self.meta.update(consistent=True, stale=tuple(sorted(set(self.meta.stale) | restored))))
        self.undo.discard()
        self.rolled_back = len(restored)
        log.warning("an unfinished resync was rolled back: %d extents restored from the undo log; "
                    "this copy is consistent again (older) and they will be copied again", len(restored))

    def _welcome_flags(self) -> int:
        flags = 0
        if self.meta.new:
            flags |= wire.WelcomeFlag.NEW
        if not self.meta.consistent:
            flags |= wire.WelcomeFlag.INCONSISTENT
        return flags

    def _prepare_welcome(self, hashes: tuple[int, ...]) -> None:
        flags = self._welcome_flags()
        self.core.welcome_flags = flags
        self.core.stale = self.meta.stale
        self.core.epoch = self.meta.epoch
        self.core.hashes = hashes
        # Keep undo during the next resync while the image is consistent, and also while an
        # unfinished pass's undo log is still open here (the link dropped mid-pass, this process
        # lived on): the new pass continues it, so a rollback still returns to the image from
        # before the first pass rather than leaving the extents the new pass changed.
        resuming = not self.meta.new and os.path.exists(self.undo.path)
        self.core.protect_image = not flags or resuming

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
        self._held = None
        self.core.session_reset()
        self.disconnected_since = None
        log.info("link: primary connected from %s", proto.peer)
        watcher = asyncio.ensure_future(self._watch(proto))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)

    async def _watch(self, proto: LinkProtocol) -> None:
        reason = await proto.closed
        if self.link is proto:
            self.link = None
            self.disconnected_since = time.time()
            if self.core.greeted or not self.link_error.startswith("refused"):
                self.link_error = reason  # keep why we refused: the primary just hangs up
            log.info("link: primary disconnected (%s)", reason)

    def _adopt_identity(self, hello: wire.Hello) -> None:
        if self.meta.volume_id is not None:
            return
        if hello.size != self.cfg.size or hello.extent_size != self.cfg.extent_size:
            return  # the core refuses it with both values named
        self._store(self.meta.update(volume_id=hello.volume_id, epoch_history=tuple(hello.history),
                                     new=True, consistent=False))
        self.journal = RecordJournal.create(journal_path(self.cfg), hello.volume_id)
        self.core.volume_id = hello.volume_id
        log.info("adopted volume identity %s from the primary; a full sync follows "
                 "(extents whose checksums match are skipped)", hello.volume_id.hex())

    def _end_of_batch(self) -> None:
        self.core.end_of_batch()
        self.pump()
        self._maybe_commit()

    # -- actions ----------------------------------------------------------------------------------

    def pump(self) -> None:
        self._pump()
        self._maybe_commit()

    def _do(self, action: core_mod.Action) -> None:
        match action:
            case core_mod.Send(message):
                if isinstance(message, wire.Refuse):
                    self.link_error = f"refused the primary: {message.reason}"
                    log.warning("link: %s", self.link_error)
                if self.link is not None:
                    self.link.send(message)
            case core_mod.JournalAppend(entry):
                assert self.journal is not None
                self.journal.append(entry)
            case core_mod.WriteData(offset, data):
                self.backend.write(offset, data)
            case core_mod.ZeroData(offset, length, punch):
                self.backend.zero(offset, length, punch, False)
            case core_mod.SyncData(through):
                self._spawn(self._sync_data(through))
            case core_mod.HashExtents(request, first, count):
                size = self.cfg.extent_size
                hashes = tuple(
                    xxhash.xxh3_64_intdigest(self.backend.read(e * size, min(size, self.cfg.size - e * size)))
                    for e in range(first, first + count))
                if self.link is not None:
                    self.link.send(wire.Hashes(request, first, hashes))
            case core_mod.ResyncStarted():
                if self.meta.consistent:
                    # Durable before the first resync write lands: from here until RESYNC_DONE
                    # this image mixes old and new data and must not be promoted unforced.
                    self._store(self.meta.update(consistent=False))
                    log.info("resync started: this copy is inconsistent until it finishes")
            case core_mod.SaveUndo(extent):
                size = self.cfg.extent_size
                self.undo.append(extent, self.backend.read(extent * size, min(size, self.cfg.size - extent * size)))
            case core_mod.ResyncFinished():
                self.backend.flush()
                self._store(self.meta.update(consistent=True, new=False, stale=()))
                self.undo.discard()
                log.info("resync finished: this copy is consistent")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _maybe_commit(self) -> None:
        if self._committing or not self.core.needs_journal_sync() or self.journal is None:
            return
        self._committing = True
        self._spawn(self._commit())

    async def _commit(self) -> None:
        journal = self.journal
        assert journal is not None
        try:
            while self.core.needs_journal_sync():
                target = self.core.journal_target()
                await asyncio.get_running_loop().run_in_executor(None, self._commit_both, journal, target)
                self.core.journal_synced(target)
                self.pump()
        finally:
            self._committing = False
        if journal.entries_since_checkpoint > CHECKPOINT_EVERY_ENTRIES and not self.core.needs_journal_sync():
            journal.checkpoint(self.core.state)

    def _commit_both(self, journal: RecordJournal, target: int) -> None:
        self.undo.sync()  # old contents first: the writes they protect wait for this commit
        journal.commit(target)

    async def _sync_data(self, through: int) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.backend.flush)
        self.core.data_synced(through)
        self.pump()

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> str:
        """Serve until ``stop`` ("stop") or a promotion ("primary")."""
        host, port = self.cfg.link_listen
        self._server = LinkListener(self._new_link, self.security.link, self._link_refused)
        await self._server.start(host, port)
        log.info("secondary listening for the primary on %s:%d", host, port)
        while not stop.is_set() and not self.role_changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.cfg.watermark_interval_s)
            self.core.request_durable()
            link = self.link
            if link is not None and time.monotonic() - link.last_rx > self.cfg.timeout_s:
                link.abort(f"no frame from the primary for {self.cfg.timeout_s:.0f} s")
            self.pump()
        await self._shutdown()
        return "primary" if self.role_changed.is_set() else "stop"

    async def promote(self, force: bool) -> tuple[int, dict[str, Any]]:
        """Failover (claim 7): become the primary of a new epoch."""
        if self.link is not None and self.core.greeted and not force:
            return 409, {"error": "the primary is still connected; promoting now would make two "
                                  "primaries (use --force if it is really gone)"}
        if not self.meta.consistent and not self.meta.new and os.path.exists(self.undo.path):
            await self._drain()
            self._roll_back_if_needed()  # promote a consistent, older copy, not a mix
        if (self.meta.new or not self.meta.consistent) and not force:
            return 409, {"error": "this copy is inconsistent (a full sync or resync into it has not "
                                  "finished), so it may hold a mix of old and new data; use --force "
                                  "to promote it anyway"}
        if self.meta.volume_id is None:
            return 409, {"error": "this site has never connected to a primary: it has no volume"}
        self._promoting = True  # refuse the old primary from here on (fencing its epoch)
        if self.link is not None:
            self.link.abort("promoted: this site no longer accepts the old primary's writes")
        await self._drain()
        assert self.journal is not None
        self.meta, failback = promote_site(self.cfg, self.meta, self.core.state)
        # Only now, with the new role on disk, may run() return and the daemon reload it.
        self.role_changed.set()
        return 200, {"promoted": True, "epoch": self.meta.epoch,
                     "failback_extents": len(failback),
                     "failback_bytes": len(failback) * self.cfg.extent_size}

    async def discard_local(self) -> tuple[int, dict[str, Any]]:
        """`resolve --discard-local` on a secondary: accept the next primary's history even if
        it diverged, and have it copy back everything this site may hold differently."""
        extra = failback_set(self.cfg, self.meta, self.core.state)
        self.meta = discard_local_changes(self.cfg, self.meta, extra)
        self.split_brain = False
        if self.journal is not None:
            self.journal.close()
        self.journal = RecordJournal.open(journal_path(self.cfg))
        self.core.state = self.journal.replayed.state
        return 200, {"discarded": True, "stale_extents": len(self.meta.stale)}

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.journal is not None:
            self.journal.commit(self.journal.appended)
            self.core.journal_synced(self.journal.appended)
            self.pump()
        self.backend.flush()

    async def _shutdown(self) -> None:
        log.info("stopping: committing the journal and flushing the image")
        if self._server is not None:
            self._server.close()
        if self.link is not None:
            self.link.abort("secondary shutting down")
        await self._drain()
        if self.journal is not None:
            self.journal.checkpoint(self.core.state)
            self.journal.close()

    def status(self) -> dict[str, Any]:
        s = self.core.statistics()
        connected = self.link is not None and self.core.greeted  # HELLO accepted, not refused
        return {
            "role": "secondary",
            "epoch": self.meta.epoch,
            "mode": self.cfg.mode.value,
            "link": "connected" if connected else "handshake" if self.link else "disconnected",
            "link_error": self.link_error,
            "disconnected_since": self.disconnected_since,
            "in_sync": connected and s.applied_seq == s.durable_seq and not self.core.needs_journal_sync(),
            "record": {"extents": s.record_extents, "capacity": self.cfg.capacity,
                       "extent_size_bytes": self.cfg.extent_size},
            "worst_case_divergence_bytes": (s.record_extents * self.cfg.extent_size),
            "counters": {"writes": s.writes_applied, "record_hits": 0, "record_misses": 0,
                         "resync_bytes": 0},
            "lag": {"bytes": 0, "writes": 0, "seconds": 0.0},  # the primary measures lag
            "seq": {"applied": s.applied_seq, "durable": s.durable_seq},
            "pending_ranges": s.pending_ranges,
            "consistent": self.meta.consistent and not self.meta.new,
            "undo_saved_extents": self.undo.saved,
            "rolled_back_extents": self.rolled_back,
            "security": self.security.describe(),
            "split_brain": self.split_brain,
            "record_may_be_incomplete": self.link is None,
            "resync": {"done_bytes": 0, "total_bytes": 0, "rate_bytes_per_s": 0},
        }


def extent_hashes(backend: FileBackend, extent_size: int) -> tuple[int, ...]:
    """xxh3 of every extent of the (flushed) image; holes are hashed without reading them."""
    backend.flush()
    zero_hash = xxhash.xxh3_64_intdigest(bytes(extent_size))
    hashes = []
    for offset in range(0, backend.size, extent_size):
        length = min(extent_size, backend.size - offset)
        status = backend.extents(offset, length)
        if len(status) == 1 and status[0][1] & 1 and status[0][0] >= length:
            hashes.append(zero_hash if length == extent_size else xxhash.xxh3_64_intdigest(bytes(length)))
        else:
            hashes.append(xxhash.xxh3_64_intdigest(backend.read(offset, length)))
    return tuple(hashes)
