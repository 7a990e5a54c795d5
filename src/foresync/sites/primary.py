"""The primary site: NBD in, the pure ``PrimaryCore`` in the middle, local disk and link out.

``pump`` is the one place core actions are carried out. Local applies run synchronously (page
cache writes), flushes go through the group flusher, sends go to the link, and host answers to
the NBD connection that asked. The dialer keeps one link to the secondary, reconnecting with a
short backoff; the timer drives the durable watermark, heartbeats and miss timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from foresync.config import SiteConfig
from foresync.errors import StorageError
from foresync.link import wire
from foresync.nbd.connection import Request
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer
from foresync.nbd.target import Done
from foresync.nbd.wire import Command, CommandFlag, Errno
from foresync.replication import primary as core_mod
from foresync.replication.primary import PrimaryCore
from foresync.site import SiteMeta, store_oos
from foresync.sites.link import LinkProtocol
from foresync.storage.backend import Extent
from foresync.storage.file_backend import FileBackend
from foresync.storage.flusher import GroupFlusher

log = logging.getLogger(__name__)

_WRITE, _FLUSH, _TRIM = int(Command.WRITE), int(Command.FLUSH), int(Command.TRIM)
_ZEROES, _CACHE = int(Command.WRITE_ZEROES), int(Command.CACHE)


class PrimarySite:
    def __init__(self, cfg: SiteConfig, meta: SiteMeta, backend: FileBackend, oos: set[int]) -> None:
        assert meta.volume_id is not None
        self.cfg = cfg
        self.meta = meta
        self.backend = backend
        self.core = PrimaryCore(
            core_mod.Config(
                mode=cfg.mode, size=cfg.size, extent_size=cfg.extent_size, capacity=cfg.capacity,
                lookahead=cfg.lookahead, eviction=cfg.eviction, volume_id=meta.volume_id,
                epoch=meta.epoch, window_bytes=cfg.window_bytes,
            ),
            read=backend.read,
        )
        self.core.restore_out_of_sync(oos)
        self.flusher = GroupFlusher(backend.flush)
        self.size = cfg.size
        self.read_only = False
        self.link: LinkProtocol | None = None
        self.link_rtt_s = 0.0
        self._dones: dict[int, Done] = {}
        self._next_op = 1
        self._pumping = False
        self._stopping = False
        self.nbd: NbdServer | None = None

    # -- NbdTarget ------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        return self.backend.read(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.backend.extents(offset, length)

    def submit(self, request: Request, done: Done) -> None:
        command = request.command
        if command == _CACHE:
            self.backend.cache(request.offset, request.length)
            done(0)
            return
        op_id = self._next_op
        self._next_op += 1
        self._dones[op_id] = done
        fua = bool(request.flags & CommandFlag.FUA)
        if command == _WRITE:
            self.core.write(op_id, request.offset, request.data, fua)
        elif command == _FLUSH:
            self.core.flush(op_id)
        elif command == _TRIM:
            # Replicated TRIM zeroes on both sites, so the two images stay byte-identical.
            self.core.zero(op_id, request.offset, request.length, True, fua)
        elif command == _ZEROES:
            self.core.zero(op_id, request.offset, request.length,
                           not request.flags & CommandFlag.NO_HOLE, fua)
        else:
            del self._dones[op_id]
            done(Errno.EINVAL)
            return
        self.pump()

    # -- carrying out core actions -------------------------------------------------------------

    def pump(self) -> None:
        if self._pumping:
            return  # the outer pump will pick up what this call's caller produced
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

    def _do(self, action: core_mod.Action) -> None:
        match action:
            case core_mod.Send(message):
                if self.link is not None:
                    self.link.send(message)
            case core_mod.ApplyLocal(seq, offset, length, data, punch):
                errno = 0
                try:
                    if data is not None:
                        self.backend.write(offset, data)
                    else:
                        self.backend.zero(offset, length, punch, False)
                except StorageError as exc:
                    log.error("local apply failed: %s", exc)
                    errno = exc.errno
                self.core.local_applied(seq, errno)
            case core_mod.AckHost(op_id, errno):
                done = self._dones.pop(op_id, None)
                if done is not None:
                    done(errno)
            case core_mod.FlushLocal(ticket):
                self.flusher.request(functools.partial(self._flushed, ticket))
            case core_mod.PersistOutOfSync(token, extents):
                store_oos(self.cfg.meta, set(extents))
                self.core.out_of_sync_persisted(token)
            case core_mod.LinkFailed(reason):
                log.warning("link: %s", reason)
                if self.link is not None:
                    self.link.abort(reason)

    def _flushed(self, ticket: int, errno: int) -> None:
        if errno:
            log.error("local flush failed (errno %d); the host will see EIO on FLUSH/FUA", errno)
            return
        self.core.local_flushed(ticket)
        self.pump()

    # -- link -----------------------------------------------------------------------------------

    def _on_message(self, message: wire.Message) -> None:
        if isinstance(message, wire.Pong):
            self.link_rtt_s = max(0.0, (time.monotonic_ns() - message.timestamp_ns) / 1e9)
        self.core.receive(message)
        self.pump()

    async def _dial_forever(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.cfg.link_peer
        backoff = 0.2
        logged = False
        while not self._stopping:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: LinkProtocol(self._on_message, self.pump), host, port),
                    timeout=self.cfg.timeout_s)
            except (OSError, TimeoutError) as exc:
                if not logged:
                    log.info("link: cannot reach secondary at %s:%d (%s); retrying", host, port, exc)
                    logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            logged = False
            self.link = proto
            log.info("link: connected to secondary at %s", proto.peer)
            self.core.connected()
            self.pump()
            reason = await proto.closed
            # A session that never got past HELLO (refused: wrong size, extent size, identity)
            # fails the same way on every retry; without a pause we would redial in a tight loop.
            greeted = self.core.link is core_mod.LinkState.CONNECTED
            self.link = None
            log.info("link: disconnected (%s)", reason)
            self.core.disconnected(reason)
            self.pump()
            if greeted:
                backoff = 0.2
            elif not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _timers(self) -> None:
        last_ping = 0.0
        while not self._stopping:
            await asyncio.sleep(self.cfg.watermark_interval_s)
            now = time.monotonic()
            self.core.tick(now)
            self.core.request_durable()
            link = self.link
            if link is not None and link.is_open:
                if now - last_ping >= self.cfg.heartbeat_s:
                    last_ping = now
                    link.send(wire.Ping(time.monotonic_ns()))
                if now - link.last_rx > self.cfg.timeout_s:
                    link.abort(f"no frame from the secondary for {self.cfg.timeout_s:.0f} s")
            self.pump()

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        export = ExportInfo(name=self.cfg.export, size=self.cfg.size, can_fast_zero=False,
                            description=f"foresync volume {self.cfg.name} (primary)",
                            max_block=self.cfg.max_write_bytes)
        self.nbd = NbdServer(self, export)
        host, port = self.cfg.nbd_listen
        await self.nbd.start(host, port)
        async with asyncio.TaskGroup() as group:
            dialer = group.create_task(self._dial_forever())
            timers = group.create_task(self._timers())
            await stop.wait()
            await self._shutdown()
            self._stopping = True
            dialer.cancel()
            timers.cancel()
        if self.link is not None:
            self.link.abort("shutting down")

    async def _shutdown(self) -> None:
        log.info("stopping: finishing in-flight NBD requests and draining replication")
        assert self.nbd is not None
        await self.nbd.aclose()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            stats = self.core.statistics()
            if stats.in_sync or stats.link != "connected":
                break
            self.core.request_durable()
            self.pump()
            await asyncio.sleep(0.02)
        await self.flusher.wait_idle()
        self.backend.flush()
        pending = self.core.unsynced_extents()
        store_oos(self.cfg.meta, pending)
        if pending:
            log.warning("stopped with %d extents not yet on the secondary; they resync on restart",
                        len(pending))

    def status(self) -> dict[str, Any]:
        s = self.core.statistics()
        nbd = self.nbd.statistics() if self.nbd else None
        return {
            "role": "primary",
            "epoch": self.meta.epoch,
            "mode": self.cfg.mode.value,
            "link": s.link,
            "link_error": self.core.link_error,
            "link_rtt_s": round(self.link_rtt_s, 6),
            "in_sync": s.in_sync,
            "record": {"extents": s.record_extents, "capacity": s.record_capacity,
                       "extent_size_bytes": self.cfg.extent_size},
            "counters": {"writes": s.writes, "record_hits": s.record_hits,
                         "record_misses": s.record_misses, "resync_bytes": s.resync_bytes},
            "lag": {"bytes": s.lag_bytes, "writes": s.lag_writes},
            "resync": {"remaining_extents": s.resync_remaining_extents,
                       "remaining_bytes": s.resync_remaining_extents * self.cfg.extent_size},
            "out_of_sync_extents": s.out_of_sync_extents,
            "seq": {"last": s.last_seq, "durable": s.durable_seq},
            "nbd": {"connections": nbd.connections if nbd else 0},
        }
