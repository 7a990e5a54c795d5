"""The primary site: NBD in, the pure ``PrimaryCore`` in the middle, local disk and link out.

``pump`` runs the one action driver (replication/driver.py); this site implements its effects.
Local applies run synchronously (page cache writes), flushes go through the group flusher, sends
go to the link, and host answers to the NBD connection that asked. The dialer keeps one link to
the secondary, reconnecting with a short backoff. The timer sleeps until the next deadline (the
core's ``get_timer``: the durable watermark and miss timeouts, heartbeats and the link timeout,
replication/liveness.py; or a failed metadata write to retry), and a pump that gives an idle
core work wakes it. A demote or a stop waits for the core to be in
sync on a future that the pump resolves (``_wait_for``), not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from foresync import tls
from foresync.admin.status import PrimaryView, SiteStatistics
from foresync.config import SiteConfig, listen_error
from foresync.daemon.group_unit import group_members
from foresync.daemon.link_router import gate_one_volume
from foresync.daemon.metadata import SiteMeta, store_file, store_oos
from foresync.daemon.metadata import store as store_meta
from foresync.daemon.objects import OBJECT_MESSAGES, ObjectsPrimary
from foresync.daemon.results import Demoted, Discarded, VerifyStarted
from foresync.daemon.security import SiteSecurity
from foresync.daemon.transitions import discard_local as discard_local_changes
from foresync.daemon.transitions import step_down
from foresync.errors import RequestRefused, StorageError
from foresync.geometry import Extent
from foresync.link import wire
from foresync.link.transport import LinkListener, LinkProtocol
from foresync.logctx import LogBudget
from foresync.nbd.exports import ExportSpec, window
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer, Publication
from foresync.nbd.target import Done, NbdTarget
from foresync.nbd.tracing import TraceWriter, TracingTarget
from foresync.replication import primary as core_mod
from foresync.replication.admission import screen_peer_primary
from foresync.replication.driver import PrimaryDriver
from foresync.replication.epochs import Lineage, Meeting
from foresync.replication.primary import Mode, PrimaryCore
from foresync.storage.backend import ImageBackend
from foresync.storage.flusher import GroupFlusher
from foresync.units import format_size

log = logging.getLogger(__name__)

CLEAN_STOP_FILE = "clean-stop"  # written on a clean stop, removed at start
OUTDATE_RETRY_S = 0.5  # [cluster]: between tries to mark the secondary outdated in etcd



class PrimarySite:
    def __init__(self, cfg: SiteConfig, meta: SiteMeta, backend: ImageBackend, oos: set[int],
                 security: SiteSecurity | None = None, everything: bool = False,
                 metadata_damage: str = "") -> None:
        assert meta.volume_id is not None
        self.cfg = cfg
        self.security = security or SiteSecurity.plain()
        self.meta = meta
        self.backend = backend
        members = group_members(cfg.group)  # HELLO's (name, size) of each member; () for a volume
        self.core = PrimaryCore(
            core_mod.Config(
                mode=cfg.mode, size=cfg.size, extent_size=cfg.extent_size, capacity=cfg.capacity,
                lookahead=cfg.lookahead, eviction=cfg.eviction, volume_id=meta.volume_id,
                window_bytes=cfg.window_bytes, history=meta.epoch_history,
                generations=meta.lineage.data,
                block_on_disconnect=cfg.on_disconnect == "block", block_timeout_s=cfg.block_timeout_s,
                resync_rate_max=cfg.resync_rate_max, predictor=cfg.predictor,
                watermark_interval_s=cfg.watermark_interval_s,
                heartbeat_s=cfg.heartbeat_s, timeout_s=cfg.timeout_s,
                member_sizes=tuple(size for _, size in members),
                member_names=tuple(name for name, _ in members),
            ),
            read=backend.read_unless_hole, is_hole=backend.is_hole,
        )
        # The core's clock starts with ours: until the first timer tick it would read 0, and an
        # op made to wait then would look (at that tick) as if it had waited since boot: EIO.
        self.core.tick(time.monotonic())
        self.core.restore_out_of_sync(oos)
        # The stored set says "every extent" (it was lost, or we were promoted from a damaged
        # copy): the next connect copies the whole volume; in sync only after that (issue 12).
        if everything:
            self.core.resync_everything()
        self.metadata_damage = metadata_damage
        clean_marker = os.path.join(cfg.meta, CLEAN_STOP_FILE)
        if os.path.exists(clean_marker):
            os.unlink(clean_marker)
        elif cfg.mode is Mode.ASYNC:
            # Async mode keeps no record: after an unclean stop nothing bounds what may differ.
            log.warning("async mode after an unclean stop (or a promotion): the next connect "
                        "copies every extent, since nothing bounds what may differ")
            self.core.resync_everything()
        self.role_changed = asyncio.Event()
        self.next_role = "stop"
        self._resync_bytes_at_pass = 0
        self.flusher = GroupFlusher(backend.flush)
        self.size = cfg.size
        self.read_only = False
        self._trace: TraceWriter | None = None
        self.link: LinkProtocol | None = None
        self._dones: dict[int, Done] = {}
        self._started: dict[int, float] = {}  # op id -> monotonic start, for the histogram
        self.write_latency: Any = None  # a prometheus histogram child, set by the daemon
        # [cluster]: wraps the NBD target in the lease's fence (daemon/cluster.py), set by the daemon
        self.fence: Callable[[NbdTarget], NbdTarget] | None = None
        # [cluster]: marks the secondary outdated in etcd before a new data generation's writes
        # land or are answered (ClusterAgent.outdate); True once the mark stands
        self.outdate: Callable[[Lineage], Awaitable[bool]] | None = None
        self._outdated: Lineage | None = None  # the generation the mark names
        self._outdating: asyncio.Task[None] | None = None
        self._next_op = 1
        self._driver = PrimaryDriver(self.core, self)
        # Futures waiting for the core to reach a state (demote, stop): checked after each pump.
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._timer_idle = False  # the timer sleeps with no deadline from the core
        self._redial_soon = asyncio.Event()  # an old primary stepped down: it listens soon
        self._timer_changed = asyncio.Event()
        self._secondary_error_logged = ("", 0.0)  # (text, monotonic time) last logged
        self._stopping = False
        self.nbd: NbdServer | Publication | None = None
        # [nbd] listen, bound by the promote that made us
        self.nbd_sockets: list[socket.socket] | None = None
        # [[volume]] tables (issue 16, daemon/volumes.py): the daemon's one NBD listener, where
        # this site publishes ``exports`` (windows of its backend), and its one link listener,
        # which hands us connections for our volume (``adopt_link``); None: listeners of our own.
        self.nbd_hub: NbdServer | None = None
        self.exports: list[ExportSpec] = [ExportSpec(cfg.export, 0, cfg.size)]
        self.shared_link_listener = False
        self.on_serving: Callable[[], None] = lambda: None  # called once NBD and the link listen
        # Called at each link edge (up or down), so /events misses no flap between its samples.
        self.on_state_change: Callable[[], None] = lambda: None
        self._link_up_seen = False
        self._peer_refusals = LogBudget(log, logging.WARNING, "refused link peers")
        # The dialer retries every 2 s at most: each failure is a WARNING, ten a minute.
        self._dial_failures = LogBudget(log, logging.WARNING, "failed dials to the secondary")
        self._meta_errors = LogBudget(log, logging.ERROR, "metadata write errors")
        self._oos_retry: tuple[int, tuple[int, ...], bool] | None = None  # a persist that failed
        self._generation_retry: tuple[int, Lineage] | None = None  # likewise
        self.objects = ObjectsPrimary(cfg, self.send) if cfg.s3_listen is not None else None

    # -- NbdTarget ------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        return self.backend.read(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.backend.extents(offset, length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        if not fua:
            # The hot path (replication/driver.py): send, apply, answer, or None when the write
            # is not a plain hit or the driver is carrying out a batch (this write may come from
            # one of its actions, and the rest of that batch must reach the link first).
            started = time.monotonic()
            errno = self._driver.write_hit(offset, data, started)
            if errno is not None:
                if not errno and self.write_latency is not None:
                    self.write_latency.observe(time.monotonic() - started)
                done(errno)
                return
        now = time.monotonic()
        self.core.write(self._new_op(done, now), offset, data, fua, now=now)
        self.pump()

    def write_many(self, items: Sequence[tuple[int, bytes, Done]]) -> None:
        """Plain (non-FUA) writes the NBD server parsed together, in order (``NbdTarget``'s
        optional group call): the leading run of hits goes as one WRITES frame and one core
        call (``PrimaryDriver.write_hits``); the write that ends a run goes alone, as through
        ``write``; then the next run, and so on."""
        writes = [(offset, data) for offset, data, _ in items]
        latency = self.write_latency
        start = 0
        while start < len(items):
            started = time.monotonic()
            errnos = self._driver.write_hits(writes, start, started)
            if errnos:
                ended = time.monotonic() if latency is not None else 0.0
                for index, errno in enumerate(errnos, start):
                    if not errno and latency is not None:
                        latency.observe(ended - started)
                    items[index][2](errno)
                start += len(errnos)
            else:
                offset, data, done = items[start]
                self.core.write(self._new_op(done, started), offset, data, False, now=started)
                self.pump()
                start += 1

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        # The export does not offer FAST_ZERO (can_fast_zero=False), so fast_only is ignored.
        now = time.monotonic()
        self.core.zero(self._new_op(done, now), offset, length, may_punch, fua, now=now)
        self.pump()

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        # Replicated TRIM zeroes on both sites, so the two images stay byte-identical.
        now = time.monotonic()
        self.core.zero(self._new_op(done, now), offset, length, True, fua, now=now)
        self.pump()

    def flush(self, done: Done) -> None:
        now = time.monotonic()
        self.core.flush(self._new_op(done, now), now=now)
        self.pump()

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.backend.cache(offset, length)
        done(0)

    def _new_op(self, done: Done, now: float) -> int:
        """An op id for the core; its AckHost action calls ``done``."""
        op_id = self._next_op
        self._next_op += 1
        self._dones[op_id] = done
        self._started[op_id] = now
        return op_id

    @staticmethod
    def _local_write_failed(exc: StorageError) -> None:
        log.error("local write failed: %s; the host gets errno %d, and the extents it touched are "
                  "out of sync until they are copied to the secondary again", exc, exc.errno)

    # -- carrying out core actions (replication/driver.py dispatches; these are the effects) ------

    def pump(self) -> None:
        self._driver()
        if (self.core.link is core_mod.LinkState.CONNECTED) != self._link_up_seen:
            self._link_up_seen = not self._link_up_seen
            self.on_state_change()
        if self._waiters:
            self._wake_waiters()
        if self._timer_idle and (self.core.get_timer() is not None or self._oos_retry is not None
                                 or self._generation_retry is not None):
            self._timer_idle = False
            self._timer_changed.set()

    def send(self, message: wire.Message) -> None:
        if self.link is not None:
            self.link.send(message)
        if isinstance(message, wire.ResyncDone):
            progress = self.core.resync_progress()
            log.info("resync finished: %s sent; %s compared in all (volume %s); in sync once the "
                     "secondary has recorded it (RESYNC_DONE_ACK)",
                     format_size(self.core.counters.resync_bytes - self._resync_bytes_at_pass),
                     format_size(progress.total_bytes), format_size(self.cfg.size))
            self._resync_bytes_at_pass = self.core.counters.resync_bytes

    def apply_local(self, seq: int, offset: int, length: int, data: bytes | None, punch: bool) -> int:
        try:
            if data is not None:
                self.backend.write(offset, data)
            else:
                self.backend.zero(offset, length, punch, False)
        except StorageError as exc:
            self._local_write_failed(exc)
            return exc.errno
        return 0

    def apply_hit(self, seq: int, offset: int, data: bytes) -> int:
        return self.apply_local(seq, offset, len(data), data, False)

    def ack_host(self, op_id: int, errno: int) -> None:
        done = self._dones.pop(op_id, None)
        started = self._started.pop(op_id, None)
        if started is not None and self.write_latency is not None:
            self.write_latency.observe(time.monotonic() - started)
        if done is not None:
            done(errno)

    def flush_local(self, through: int) -> None:
        self.flusher.request(functools.partial(self._flushed, through))

    def link_failed(self, reason: str) -> None:
        if reason != self.core.secondary_error:  # that one was logged at ERROR already
            log.warning("link: %s", reason)
        if self.link is not None:
            self.link.abort(reason)

    def resume_later(self) -> None:
        # After the callbacks already ready (link frames, NBD requests, the admin endpoint): a
        # long resync never holds the event loop for more than a slice.
        asyncio.get_running_loop().call_soon(self._resume_resync)

    def _resume_resync(self) -> None:
        self.core.resume(now=time.monotonic())
        self.pump()

    def persist_out_of_sync(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        try:
            store_oos(self.cfg.meta, set(extents), everything)
        except StorageError as exc:
            # A full or failing metadata disk: the writes that need these extents stored stay
            # waiting (never acknowledged unrecorded), and the timer retries the latest set.
            self._oos_retry = (token, extents, everything)
            self._meta_errors("%s: writes to extents the secondary may lack wait until it is "
                              "stored (retrying)", exc)
            return
        if self._oos_retry is not None:
            log.info("out-of-sync set stored again; waiting writes go on")
            self._oos_retry = None
        self.core.out_of_sync_persisted(token, now=time.monotonic())

    def persist_generation(self, token: int, lineage: Lineage) -> None:
        """Writes taken while cut off start a new data generation (epochs.py): stored before the
        first of them lands or is answered. A failure leaves them waiting; the timer retries.
        With [cluster], the secondary is marked outdated in etcd first (``_mark_outdated``)."""
        if self.outdate is not None and self._outdated != lineage:
            if self._outdating is None or self._outdating.done():
                self._outdating = asyncio.ensure_future(self._mark_outdated(token, lineage))
            return
        try:
            store_meta(self.cfg.meta, self.meta.with_lineage(lineage))
        except StorageError as exc:
            self._generation_retry = (token, lineage)
            self._meta_errors("%s: writes taken without the secondary wait until their new data "
                              "generation is stored (retrying)", exc)
            return
        self.meta = self.meta.with_lineage(lineage)
        self._generation_retry = None
        log.info("writes without the secondary: data generation %d started (a secondary promoted "
                 "meanwhile would meet a split brain, not a failback)", len(lineage.data))
        self.core.generation_persisted(token, now=time.monotonic())

    async def _mark_outdated(self, token: int, lineage: Lineage) -> None:
        """Retried until the mark stands (the writes wait meanwhile; with etcd away the lease
        fences them anyway), or until this role ends (``run`` cancels it)."""
        assert self.outdate is not None
        while not await self.outdate(lineage):
            await asyncio.sleep(OUTDATE_RETRY_S)
        self._outdated = lineage
        self.persist_generation(token, lineage)
        self.pump()

    def become_secondary(self, lineage: Lineage) -> None:
        """A newer primary told us we are outdated (failback, claim 8). Our out-of-sync set went
        to it with our HELLO, so we can forget it; it will copy back what it must."""
        if self.role_changed.is_set():
            return
        log.warning("a primary of a later epoch (%d) exists: stepping down to secondary to "
                    "receive the failback", lineage.epoch)
        self.meta = step_down(self.cfg, self.meta, lineage=lineage)
        self.next_role = "secondary"
        self.role_changed.set()
        if self.link is not None:
            self.link.abort("stepping down")

    def _flushed(self, ticket: int, errno: int) -> None:
        if errno:
            log.error("local flush failed (errno %d); the host sees EIO on FLUSH/FUA", errno)
            self.core.local_flush_failed(ticket)
            self.pump()
            return
        self.core.local_flushed(ticket, now=time.monotonic())
        self.pump()

    # -- link -----------------------------------------------------------------------------------

    @property
    def link_rtt_s(self) -> float:
        """The round trip of the last heartbeat (the core measures it from each PONG)."""
        return self.core.link_rtt_s

    def _on_message(self, message: wire.Message) -> None:
        if self.objects is not None and isinstance(message, OBJECT_MESSAGES):
            self.objects.receive(message)
            return
        self.core.receive(message, now=time.monotonic())
        if isinstance(message, wire.Welcome) and self.objects is not None:
            self.objects.connected()  # the object stream starts once the session is up
        if isinstance(message, wire.StorageFailed):
            self._log_secondary_error()
        elif isinstance(message, wire.ResyncDoneAck):
            log.info("resync recorded by the secondary: its copy is consistent")
        self.pump()

    def _log_secondary_error(self) -> None:
        """At ERROR, but the same failure only once a minute: the dialer retries every 2 s."""
        text, at = self._secondary_error_logged
        now = time.monotonic()
        error = self.core.secondary_error
        if error == text and now - at < 60:
            log.debug("link: %s", error)
            return
        self._secondary_error_logged = (error, now)
        log.error("link: %s; replication continues as after a link loss (on_disconnect = %s) and "
                  "resumes by itself once the secondary can write again", error, self.cfg.on_disconnect)

    async def _dial_forever(self) -> None:
        attempts: list[LinkProtocol] = []  # connections made by the current attempt
        try:
            await self._dial_loop(attempts)
        finally:
            # Cancelled (stopping, or a role change) while a connection was being made or
            # greeted: close it now. Left open, it would sit in setup until the deadline and be
            # reported as a peer that never answered (after every planned switchover).
            for proto in attempts:
                if proto is not self.link:
                    proto.abort("stopping")

    async def _dial_loop(self, attempts: list[LinkProtocol]) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.cfg.link_peer
        backoff = 0.2

        async def wait_before_redialling() -> None:
            nonlocal backoff
            try:  # cut short when the old primary just stepped down (it listens in a moment)
                await asyncio.wait_for(self._redial_soon.wait(), backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 2.0)
                return
            self._redial_soon.clear()
            backoff = 0.05  # it may still be stepping down (a few ms): retry soon after

        security = self.security.link
        tls_args: dict[str, Any] = {}
        if security.client_tls is not None:
            tls_args = {"ssl": security.client_tls, "server_hostname": host,
                        "ssl_handshake_timeout": self.cfg.timeout_s}
        def dial() -> LinkProtocol:
            proto = LinkProtocol(self._on_message, self.pump, security, dialler=True,
                                 on_error=self._link_refused)
            attempts.append(proto)
            return proto

        while not self._stopping:
            attempts.clear()  # every earlier one is closed by now
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(dial, host, port, **tls_args),
                    timeout=self.cfg.timeout_s)
                waits: list[asyncio.Future[Any]] = [proto.ready, proto.closed]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            except ssl.SSLError as exc:
                self.core.link_trouble(f"TLS handshake with {host}:{port} failed: {tls.describe_error(exc)}")
                log.warning("link: %s", self.core.link_error)
                await wait_before_redialling()
                continue
            except (OSError, TimeoutError) as exc:
                if security.client_tls is not None and isinstance(exc, ConnectionResetError):
                    # The listener dropped us mid-handshake: it refused our certificate.
                    self.core.link_trouble(f"TLS handshake with {host}:{port} failed: the peer "
                                            f"closed the connection ({exc})")
                else:
                    # Every failed dial is the link's state now (issue 17): /status says why.
                    self.core.link_trouble(f"cannot reach the secondary at {host}:{port}: "
                                            f"{_dial_reason(exc)}")
                self._dial_failures("link: %s; retrying", self.core.link_error)
                await wait_before_redialling()
                continue
            if not proto.ready.done():  # refused before authenticating: link_error says why
                proto.abort("not authenticated")
                await wait_before_redialling()
                continue
            if self._stopping:
                # Python 3.11's wait_for returns the result instead of raising when it is
                # cancelled just as the connection completes: run() stopped us meanwhile, and
                # this connection must not start a session that run() would then wait out.
                proto.abort("stopping")
                break
            self.link = proto
            log.info("link: connected to secondary at %s", proto.peer)
            if self.cfg.link_route is not None:  # a daemon of many volumes: name ours first
                proto.send(wire.Route(self.cfg.link_route))
            failures = self.core.counters.secondary_storage_errors
            self.core.connected(now=time.monotonic())  # HELLO, and the first PING
            self.pump()
            reason = await proto.closed
            # A session that never got past HELLO (refused: wrong size, extent size, identity)
            # fails the same way on every retry; without a pause we would redial in a tight loop.
            # So does one the secondary ended because it cannot write (a full disk).
            greeted = (self.core.link is core_mod.LinkState.CONNECTED
                       and self.core.counters.secondary_storage_errors == failures)
            self.link = None
            log.log(logging.INFO if self._stopping else logging.WARNING,
                    "link: lost the secondary at %s (%s)", proto.peer, reason)
            self.core.disconnected(reason, now=time.monotonic())
            if self.objects is not None:
                self.objects.disconnected()
            self.pump()
            if greeted:
                backoff = 0.2
            elif not self._stopping:
                await wait_before_redialling()

    async def _timers(self) -> None:
        """Sleep until the next deadline (the core's ``get_timer``: its watermark, heartbeat and
        link timeout; or a failed metadata write to retry), then handle what is due. A pump
        that gives an idle core work wakes the sleep early (``_timer_changed``)."""
        while not self._stopping:
            now = time.monotonic()
            core_at = self.core.get_timer()
            deadlines = [] if core_at is None else [core_at]
            if self._oos_retry is not None or self._generation_retry is not None:
                deadlines.append(now + self.cfg.watermark_interval_s)
            self._timer_idle = not deadlines
            self._timer_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(),
                                       max(0.0, min(deadlines) - now) if deadlines else None)
            self._timer_idle = False
            now = time.monotonic()
            self.core.handle_timer(now)
            if self._oos_retry is not None:
                self.persist_out_of_sync(*self._oos_retry)
            if self._generation_retry is not None:
                self.persist_generation(*self._generation_retry)
            self.pump()

    # -- lifecycle ------------------------------------------------------------------------------

    # -- the link listener: other primaries ---------------------------------------------------------

    def _link_refused(self, reason: str) -> None:
        self.core.link_trouble(reason)

    def _peer_refused(self, reason: str) -> None:
        """A connection to our listener failed to authenticate: worth showing only while our own
        link is down (it is logged either way)."""
        if self.core.link is not core_mod.LinkState.CONNECTED:
            self.core.link_trouble(f"refused a peer: {reason}")

    def _new_peer(self) -> LinkProtocol:
        proto = LinkProtocol(lambda m: self._on_peer_message(proto, m), lambda: None,
                             self.security.link, dialler=False, on_error=self._peer_refused)
        gate_one_volume(proto, self.cfg.name, lambda m: self._on_peer_message(proto, m),
                        lambda: None, self._peer_refused)
        return proto

    def adopt_link(self, proto: LinkProtocol) -> None:
        """A connection the daemon's link listener routed to our volume: as from our own."""
        proto.rebind(lambda m: self._on_peer_message(proto, m), lambda: None, self._peer_refused)

    def link_refused(self, reason: str) -> None:
        """A connection to the daemon's link listener failed before it named a volume."""
        self._peer_refused(reason)

    def _on_peer_message(self, proto: LinkProtocol, message: wire.Message) -> None:
        """A site dialled us. Only a primary does that: admission.screen_peer_primary decides."""
        assert self.meta.volume_id is not None
        answer = screen_peer_primary(message, self.meta.volume_id, self.core.lineage)
        if answer.meeting is Meeting.DEMOTE_PEER:
            assert isinstance(message, wire.Hello)
            # The old primary is back (failback): what it wrote that we may lack joins our
            # out-of-sync set, durably, before we tell it to step down.
            everything = bool(message.flags & wire.HelloFlag.EVERYTHING_OUT_OF_SYNC)
            self.core.absorb_out_of_sync(set(message.out_of_sync), everything)
            self._store_oos(self.core.out_of_sync)
            if everything:
                log.error("the old primary lost its out-of-sync set: the failback copies the "
                          "whole volume")
            log.warning("%s", answer.detail)
            # It becomes our secondary in a moment: redial now, not after up to 2 s of backoff
            # (a failback's start waited for it, issue 19).
            self._redial_soon.set()
        elif answer.meeting is Meeting.FOLLOW:
            log.warning("%s", answer.detail)
        elif answer.meeting is Meeting.SPLIT_BRAIN:
            self.core.split_brain_detected(answer.detail)
            log.error("%s", answer.detail)
        else:
            self._peer_refusals("link: refused a peer at %s: %s", proto.peer, answer.detail)
        if answer.reply is not None:
            proto.send(answer.reply)
        proto.close_after_flush()

    async def discard_local(self) -> Discarded:
        """`resolve --discard-local` after a split brain: give up this site's changes and become
        the secondary of the other side, which copies back everything either side changed."""
        if self.nbd is not None:
            await self.nbd.aclose()
        await self.flusher.wait_idle()
        self._store_oos(self.core.unsynced_extents() | self.core.out_of_sync)
        self.meta = discard_local_changes(self.cfg, self.meta)
        self.next_role = "secondary"
        self.role_changed.set()
        if self.link is not None:
            self.link.abort("discarding local changes")
        return Discarded(len(self.meta.stale))

    def verify(self, repair: bool) -> VerifyStarted:
        """Online verify: compare per-extent checksums with the secondary in the background."""
        if not self.core.start_verify(repair, now=time.monotonic()):
            raise RequestRefused("verify needs a connected secondary and no verify running")
        self.pump()
        return VerifyStarted(repair, self.core.extent_count)

    async def _wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``condition()`` holds (checked after every pump: the core changes only
        there), asking both sites for durability now and on every watermark timer meanwhile.
        False if it did not within ``timeout_s``."""
        self.core.request_durable()
        self.pump()
        if condition():
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, waiter)
        self._waiters.append(entry)
        self._timer_changed.set()  # a timer sleeping idle re-reads the core's deadline
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return True

    def _wake_waiters(self) -> None:
        for condition, waiter in list(self._waiters):
            if not waiter.done() and condition():
                waiter.set_result(None)

    async def demote(self) -> Demoted:
        """Planned switchover: stop serving, drain until the secondary has everything, step down."""
        if self.core.link is not core_mod.LinkState.CONNECTED:
            raise RequestRefused("the secondary is not connected: demoting now could lose writes it "
                                 "does not have (promote it with --force instead, if it is gone)")
        assert self.nbd is not None
        await self.nbd.aclose()
        if not await self._wait_for(lambda: self.core.statistics().in_sync, 60):
            raise RequestRefused("the secondary did not catch up within 60 s; still primary "
                                 "(NBD is stopped: restart the site to serve again)")
        await self.flusher.wait_idle()
        self.backend.flush()
        self.meta = step_down(self.cfg, self.meta)
        self.next_role = "secondary"
        self.role_changed.set()
        if self.link is not None:
            self.link.abort("demoted")
        return Demoted(self.meta.epoch)

    async def run(self, stop: asyncio.Event) -> str:
        """Serve until ``stop`` ("stop") or a role change ("secondary")."""
        listen_host, listen_port = self.cfg.link_listen
        listener = LinkListener(self._new_peer, self.security.link, self._peer_refused)
        if not self.shared_link_listener:
            try:
                await listener.start(listen_host, listen_port)
            except OSError as exc:
                raise listen_error("[link] listen", self.cfg.link_listen, exc) from None
        served: NbdTarget = self
        if self.cfg.nbd_trace:
            self._trace = TraceWriter(self.cfg.nbd_trace, self.cfg.size)
            served = TracingTarget(self, self._trace)
        if self.fence is not None:
            served = self.fence(served)
        if self.nbd_hub is not None:
            self.nbd = self.nbd_hub.publish([(self._export_info(spec), window(served, spec))
                                             for spec in self.exports])
        else:
            await self._serve_nbd(served, listener)
        if self.objects is not None:
            await self.objects.start()
        self.on_serving()
        stop_error: StorageError | None = None
        async with asyncio.TaskGroup() as group:
            dialer = group.create_task(self._dial_forever())
            timers = group.create_task(self._timers())
            stopped = group.create_task(stop.wait())
            changed = group.create_task(self.role_changed.wait())
            await asyncio.wait([stopped, changed], return_when=asyncio.FIRST_COMPLETED)
            if not self.role_changed.is_set():
                try:
                    await self._shutdown()
                except StorageError as exc:  # raised below, outside the task group
                    log.error("clean stop failed: %s; the next start treats this stop as "
                              "unclean", exc)
                    stop_error = exc
            elif self.nbd is not None:
                await self.nbd.aclose()
            self._stopping = True
            for task in (dialer, timers, stopped, changed):
                task.cancel()
        if self._outdating is not None:
            self._outdating.cancel()
        if self.link is not None:
            self.link.abort("shutting down")
        listener.close()
        if self.objects is not None:
            await self.objects.aclose()
        if self._trace is not None:
            self._trace.close()
        if stop_error is not None:
            raise stop_error
        return self.next_role

    def _export_info(self, spec: ExportSpec) -> ExportInfo:
        return ExportInfo(name=spec.name, size=spec.size, can_fast_zero=False,
                          description=f"foresync volume {self.cfg.name} (primary)",
                          max_block=self.cfg.max_write_bytes)

    async def _serve_nbd(self, served: NbdTarget, listener: LinkListener) -> None:
        """An NBD server of our own on [nbd] listen (a one-volume config)."""
        export = self._export_info(self.exports[0])
        self.nbd = nbd = NbdServer(served, export, self.security.nbd_limits, tls=self.security.nbd_tls)
        host, port = self.cfg.nbd_listen
        sockets, self.nbd_sockets = self.nbd_sockets, None
        try:
            await nbd.start(host, port, sockets)
        except OSError as exc:
            listener.close()
            raise listen_error("[nbd] listen", self.cfg.nbd_listen, exc) from None

    async def _shutdown(self) -> None:
        log.info("stopping: finishing in-flight NBD requests and draining replication")
        assert self.nbd is not None
        await self.nbd.aclose()
        def drained() -> bool:
            stats = self.core.statistics()
            return stats.in_sync or stats.link != "connected"

        await self._wait_for(drained, 15)
        # One last local flush through the core, so it knows what is durable here: a raw
        # backend.flush() alone leaves the latest writes "dirty" to the core, and a clean stop
        # would store their extents as out-of-sync and resync them on restart for nothing.
        self.core.request_durable()
        self.pump()
        await self.flusher.wait_idle()
        self.backend.flush()
        pending = self.core.unsynced_extents()
        self._store_oos(pending)
        # Only once oos.json is complete, and atomically (a marker cut short by a full disk must
        # not exist): without it the next start treats this stop as unclean.
        store_file(Path(self.cfg.meta) / CLEAN_STOP_FILE, "stopped cleanly\n")
        if pending:
            log.warning("stopped with %d extents not yet on the secondary; they resync on restart",
                        len(pending))

    def _miss_ratio_estimate(self, writes: int, misses: int) -> tuple[tuple[int, float], ...]:
        """(capacity in extents, estimated miss ratio), ascending by capacity."""
        estimator = self.core.estimator
        if estimator is None:
            return ()
        return tuple(sorted(estimator.estimates(misses / writes if writes else None).items()))

    def _store_oos(self, extents: set[int]) -> None:
        """Replace the stored out-of-sync set, keeping "every extent" while a full pass is due."""
        store_oos(self.cfg.meta, extents, self.core.full_resync_pending)

    def statistics(self) -> SiteStatistics:
        """A snapshot for /status and /metrics (``admin.status``)."""
        now = time.monotonic()
        s = self.core.statistics()
        if self.metadata_damage and not self.core.full_resync_pending:
            self.metadata_damage = ""  # the full pass it asked for has finished
        return SiteStatistics(
            epoch=self.meta.epoch, mode=self.cfg.mode.value, link=s.link,
            link_error=self.core.link_error, in_sync=s.in_sync,
            record_extents=s.record_extents, record_capacity=s.record_capacity,
            extent_size_bytes=self.cfg.extent_size, writes=s.writes,
            storage_errors=s.local_write_errors, split_brain=s.split_brain,
            security=self.security.describe(),
            view=PrimaryView(
                core=s, resync=self.core.resync_progress(now=now),
                verify=self.core.verify_progress(now=now),
                link_rtt_s=self.link_rtt_s, secondary_error=self.core.secondary_error,
                lag_seconds=self.core.lag_seconds(now=now), eviction=self.cfg.eviction.value,
                predictor=self.cfg.predictor,
                miss_ratio_estimate=self._miss_ratio_estimate(s.writes, s.record_misses),
                failback_bound_bytes=self.core.failback_bound_extents() * self.cfg.extent_size,
                full_resync_pending=self.core.full_resync_pending,
                metadata_damage=self.metadata_damage,
                nbd_connections=self.nbd.statistics().connections if self.nbd else 0))


def _dial_reason(exc: BaseException) -> str:
    """Why a dial failed, in a few words: the OS's text (``Connection refused``) or a timeout."""
    if isinstance(exc, TimeoutError) and not getattr(exc, "strerror", None):
        return "no answer before [link] timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
