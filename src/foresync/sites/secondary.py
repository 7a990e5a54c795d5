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

from foresync.config import SiteConfig
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.link import wire
from foresync.replication import secondary as core_mod
from foresync.replication.secondary import SecondaryCore
from foresync.site import JOURNAL_FILE, SiteMeta
from foresync.site import store as store_meta
from foresync.sites.link import LinkProtocol
from foresync.storage.file_backend import FileBackend

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENTRIES = 20000


class SecondarySite:
    def __init__(self, cfg: SiteConfig, meta: SiteMeta, backend: FileBackend,
                 journal: RecordJournal | None) -> None:
        self.cfg = cfg
        self.meta = meta
        self.backend = backend
        self.journal = journal
        state = journal.replayed.state if journal is not None else None
        self.core = SecondaryCore(cfg.size, cfg.extent_size, cfg.lookahead,
                                  meta.volume_id or bytes(16),
                                  state if state is not None else RecordState(), epoch=meta.epoch)
        self.link: LinkProtocol | None = None
        self.link_error = ""
        self.disconnected_since: float | None = time.time()
        self._pumping = False
        self._committing = False
        self._syncing = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: asyncio.Server | None = None

    # -- link -----------------------------------------------------------------------------------

    def _new_link(self) -> LinkProtocol:
        proto = LinkProtocol(lambda m: self._on_message(proto, m), self._end_of_batch)
        return proto

    def _on_message(self, proto: LinkProtocol, message: wire.Message) -> None:
        if proto is not self.link:
            if not isinstance(message, wire.Hello):
                proto.abort("first message was not HELLO")
                return
            self._take_over(proto)
            if not self._adopt_identity(message):
                return
        self.core.receive(message)
        self.pump()

    def _take_over(self, proto: LinkProtocol) -> None:
        if self.link is not None:
            self.link.abort("replaced by a new connection from the primary")
        self.link = proto
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

    def _adopt_identity(self, hello: wire.Hello) -> bool:
        if self.meta.volume_id is not None:
            return True
        if hello.size != self.cfg.size or hello.extent_size != self.cfg.extent_size:
            return True  # the core refuses it with both values named
        self.meta = self.meta.with_volume(hello.volume_id)
        store_meta(self.cfg.meta, self.meta)
        self.journal = RecordJournal.create(_journal_path(self.cfg), hello.volume_id)
        self.core.volume_id = hello.volume_id
        log.info("adopted volume identity %s from the primary", hello.volume_id.hex())
        return True

    def _end_of_batch(self) -> None:
        self.core.end_of_batch()
        self.pump()
        self._maybe_commit()

    # -- actions ----------------------------------------------------------------------------------

    def pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                actions = self.core.actions()
                if not actions:
                    break
                for action in actions:
                    self._do(action)
        finally:
            self._pumping = False
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
                await asyncio.get_running_loop().run_in_executor(None, journal.commit, target)
                self.core.journal_synced(target)
                self.pump()
        finally:
            self._committing = False
        if journal.entries_since_checkpoint > CHECKPOINT_EVERY_ENTRIES and not self.core.needs_journal_sync():
            journal.checkpoint(self.core.state)

    async def _sync_data(self, through: int) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.backend.flush)
        self.core.data_synced(through)
        self.pump()

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.cfg.link_listen
        self._server = await loop.create_server(self._new_link, host, port, reuse_address=True)
        log.info("secondary listening for the primary on %s:%d", host, port)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.cfg.watermark_interval_s)
            self.core.request_durable()
            link = self.link
            if link is not None and time.monotonic() - link.last_rx > self.cfg.timeout_s:
                link.abort(f"no frame from the primary for {self.cfg.timeout_s:.0f} s")
            self.pump()
        await self._shutdown()

    async def _shutdown(self) -> None:
        log.info("stopping: committing the journal and flushing the image")
        if self._server is not None:
            self._server.close()
        if self.link is not None:
            self.link.abort("secondary shutting down")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.journal is not None:
            self.journal.commit(self.journal.appended)
            self.core.journal_synced(self.journal.appended)
            self.pump()
        self.backend.flush()
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
            "lag": {"bytes": 0, "writes": 0},
            "seq": {"applied": s.applied_seq, "durable": s.durable_seq},
            "pending_ranges": s.pending_ranges,
        }


def _journal_path(cfg: SiteConfig) -> str:
    return os.path.join(cfg.meta, JOURNAL_FILE)
