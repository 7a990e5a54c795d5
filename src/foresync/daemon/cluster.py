"""A site's member of the cluster (issue 16, part 3): carries out the lease core's decisions
(replication/lease.py) against etcd (daemon/etcd.py), and fences the primary's NBD answers.

One task, beside the site's role, for the daemon's whole life: the role may change under it
(promote, step down), and it reads the current one each round. Each round it either renews the
lease (a holding primary, every ttl / 3) or reads both keys and does what the core decides:
take the lease, promote this secondary (the existing promote path, with the epoch etcd
registered), or give back a lease a demoted site no longer needs. ``may_ack`` is the fence,
asked by ``FencedTarget`` for every request and every answer.

``outdate`` is the primary's hook before it answers writes without its secondary (its
``PersistGeneration``, once per disconnection): it writes the ``outdated`` mark (lease.py) and
tells whether it stands. A round and an ``outdate`` never interleave (``_etcd_lock``): a round's
clear of the mark is decided on a read and on the site's state taken after it, so a mark written
meanwhile makes the clear's compare-and-swap fail instead of being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from foresync.config import SiteConfig
from foresync.daemon.etcd import Etcd, EtcdUnavailable, EtcdValueDamaged
from foresync.daemon.primary import PrimarySite
from foresync.daemon.secondary import SecondarySite
from foresync.daemon.transitions import can_roll_back, promote_refusal
from foresync.errors import Errno, ForesyncError, RequestRefused, StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.geometry import Extent
from foresync.logctx import LogBudget
from foresync.nbd.target import Done, NbdTarget, WriteItems, WriteMany, group_call
from foresync.replication.epochs import Lineage, new_epoch_id
from foresync.replication.lease import Action, LeaseCore, Local, Outdated, Record

log = logging.getLogger(__name__)

Runner = PrimarySite | SecondarySite
CLOSE_TIMEOUT_S = 2.0


def local_of(runner: Runner) -> Local:
    """What the lease core needs to know of the site now."""
    meta = runner.meta
    epoch_id = meta.epoch_history[-1] if meta.epoch_history else 0
    refusal = ""
    rollback_pending = False
    if isinstance(runner, PrimarySite):
        return Local(meta.role, meta.epoch, epoch_id, generations=meta.lineage.data,
                     peer_holds_ours=runner.core.secondary_holds_lineage)
    if isinstance(runner, SecondarySite):
        rollback_pending = can_roll_back(meta, runner.undo)
        if meta.volume_id is None:
            refusal = "this site has never connected to a primary: it has no copy"
        else:
            refusal = promote_refusal(meta, False, rollback_pending)
    return Local(meta.role, meta.epoch, epoch_id, refusal, len(meta.stale), rollback_pending,
                 meta.lineage.data)


class ClusterAgent:
    def __init__(self, cfg: SiteConfig, runner: Callable[[], Runner],
                 publish: Callable[[dict[str, Any]], None],
                 stopping: Callable[[], bool] = lambda: False, faults: Faults = NO_FAULTS) -> None:
        assert cfg.cluster is not None
        self.cluster = cfg.cluster
        self.volume = cfg.name
        self.runner = runner
        self.stopping = stopping  # the daemon is stopping: take nothing, promote nothing
        self.publish = publish
        self.core = LeaseCore(cfg.cluster.site, cfg.cluster.lease_ttl_s, faults=faults)
        self.etcd = Etcd(cfg.cluster, cfg.name)
        self.lease_id = 0
        self.etcd_error = ""
        self.promotions = 0
        self.outdates = 0  # ``outdated`` marks this site wrote (once per disconnection)
        self._said = ("", True)  # (reason, may_ack) last published
        self._etcd_errors = LogBudget(log, logging.WARNING, "etcd errors")
        self._etcd_lock = asyncio.Lock()  # a round and an ``outdate`` never interleave

    async def outdate(self, lineage: Lineage) -> bool:
        """Before the primary answers writes of its newest data generation without its
        secondary: mark the secondary's copy outdated in etcd (lease.py). False if the mark
        could not be written (etcd unreachable, or a newer epoch there): the writes wait."""
        generation = lineage.data[-1]
        async with self._etcd_lock:
            self.core.local_changed(local_of(self.runner()))
            mark = self.core.outdate_mark(generation)
            if mark is None:  # the next round's read may find it ours; retried after it
                return False
            try:
                written = await self.etcd.outdate(mark, self.etcd.versions)
            except EtcdUnavailable as exc:
                self.etcd_error = str(exc)
                self._etcd_errors("cannot mark the secondary outdated: %s", exc)
                return False
        if not written:
            self._etcd_errors("cannot mark the secondary outdated: etcd's epoch record changed "
                              "since it was read (retrying after the next read)")
            return False
        self.outdates += 1
        log.warning("answering writes without the secondary: its copy is marked outdated in "
                    "etcd (data generation %#x); it will not promote itself until it holds them",
                    generation)
        self.publish({"type": "cluster", "action": "outdated", "epoch": mark.epoch,
                      "generation": generation})
        return True

    def may_ack(self) -> bool:
        return self.core.may_ack(time.monotonic())

    async def run(self) -> None:
        """Until cancelled. The lease is not revoked on the way out: it lapses after the ttl, so
        a primary restarted within it takes its lease back, and the secondary takes over only
        after that (docs/operations.md)."""
        try:
            while True:
                self.core.local_changed(local_of(self.runner()))
                try:
                    await self._round()
                except EtcdValueDamaged as exc:  # fenced and promoting nothing until it is fixed
                    self.etcd_error = str(exc)
                    self._etcd_errors("%s", exc)
                except Exception as exc:  # a bug or a client surprise: fenced, say so, go on
                    self.etcd_error = f"{type(exc).__name__}: {exc}"
                    log.exception("cluster round failed")
                self._tell()
                now = time.monotonic()
                await asyncio.sleep(max(0.0, self.core.get_timer(now) - now))
        finally:
            # Bounded: a stop must never wait on etcd (a chaos run once hung a secondary's
            # SIGTERM here, or close by; the client is dropped either way).
            with contextlib.suppress(Exception):
                await asyncio.wait([asyncio.ensure_future(self.etcd.aclose())],
                                   timeout=CLOSE_TIMEOUT_S)

    async def _round(self) -> None:
        async with self._etcd_lock:
            await self._round_locked()

    async def _round_locked(self) -> None:
        action = self.core.next_action(time.monotonic())
        try:
            if action is Action.RENEW:
                await self._renew()
                return
            self.core.observed(await self.etcd.read())
            self.etcd_error = ""
            self.core.local_changed(local_of(self.runner()))  # after the read: see the notes
            action = self.core.next_action(time.monotonic())
            if self.stopping():  # a chaos run promoted a secondary whose journal was closing
                return
            if action is Action.ACQUIRE:
                await self._acquire()
            elif action is Action.PROMOTE:
                await self._promote()
            elif action is Action.RELEASE:
                await self._release()
            elif action is Action.CLEAR_OUTDATED and await self.etcd.clear_outdated(self.etcd.versions):
                log.info("the secondary holds every write again: its outdated mark is cleared")
        except EtcdUnavailable as exc:
            self.etcd_error = str(exc)
            if action is Action.RENEW:
                self.core.renew_failed(time.monotonic(), str(exc))
            self._etcd_errors("%s", exc)

    async def _renew(self) -> None:
        sent = time.monotonic()
        ttl = await self.etcd.keepalive(self.lease_id)
        if ttl <= 0:
            self.core.lost("etcd says it expired")
            self.lease_id = 0
            log.error("the primary lease expired on etcd: fenced, no write is acknowledged")
        else:
            self.core.granted(sent, ttl)

    async def _grant(self) -> tuple[int, float, float]:
        sent = time.monotonic()  # etcd counts the ttl down from after this
        lease_id, ttl = await self.etcd.grant(self.cluster.lease_ttl_s)
        return lease_id, ttl, sent

    async def _acquire(self) -> None:
        local = self.core.local
        lease_id, ttl, sent = await self._grant()
        mine = Record(self.cluster.site, local.epoch, local.epoch_id)
        if await self.etcd.acquire(lease_id, mine, self.etcd.versions):
            self.lease_id = lease_id
            self.core.granted(sent, ttl)
            log.info("holding the primary lease (epoch %d)", local.epoch)
        else:
            await self.etcd.revoke(lease_id)

    async def _promote(self) -> None:
        seen = self.core.seen
        assert seen is not None and seen.epoch is not None
        runner = self.runner()
        if not isinstance(runner, SecondarySite):
            return
        lease_id, ttl, sent = await self._grant()
        new = Record(self.cluster.site, seen.epoch.epoch + 1, new_epoch_id())
        if not await self.etcd.promote(lease_id, new, self.etcd.versions):
            await self.etcd.revoke(lease_id)
            return
        self.lease_id = lease_id
        self.core.granted(sent, ttl)
        log.warning("the primary's lease expired (site %s, epoch %d): this site took the lease "
                    "for epoch %d and promotes itself", seen.epoch.site, seen.epoch.epoch, new.epoch)
        try:
            if self.stopping() or runner is not self.runner():
                raise RequestRefused("the site is stopping or changed role meanwhile")
            await runner.promote(False, epoch_id=new.epoch_id, lease_expired=True)
        except Exception as exc:  # a refusal, the metadata unwritable, or a bug: undo in etcd
            self.core.reason = f"automatic promotion failed: {exc}"
            log.error("%s; the epoch record is put back", self.core.reason)
            await self.etcd.restore(seen.epoch, new)
            await self._release()
            if not isinstance(exc, ForesyncError):
                raise
            return
        self.promotions += 1
        self.publish({"type": "cluster", "action": "promoted", "epoch": new.epoch,
                      "site": new.site, "from": seen.epoch.site})

    async def _release(self) -> None:
        if self.lease_id:
            lease_id, self.lease_id = self.lease_id, 0
            self.core.released()
            await self.etcd.revoke(lease_id)

    def _tell(self) -> None:
        """An event when the fence falls or lifts, or the reason not to promote changes."""
        now = time.monotonic()
        said = (self.core.reason, self.core.may_ack(now) if self.core.local.role == "primary" else True)
        if said != self._said:
            self._said = said
            self.publish({"type": "cluster", "action": "state", "fenced": not said[1],
                          "reason": said[0]})

    def status(self) -> dict[str, Any]:
        """The ``cluster`` section of /status (docs/operations.md)."""
        now = time.monotonic()
        self.core.local_changed(local_of(self.runner()))
        stats = self.core.statistics(now)
        seen = stats.seen
        holder = seen.holder if seen is not None else None
        latest = seen.epoch if seen is not None else None
        return {
            "site": self.cluster.site, "name": self.cluster.name, "volume": self.volume,
            "role": self.core.local.role, "epoch": self.core.local.epoch,
            "holding_lease": stats.holding,
            # the fence of the NBD target (FencedTarget), whatever the metadata says meanwhile
            "fenced": isinstance(self.runner(), PrimarySite) and not stats.may_ack,
            "fenced_for_s": round(stats.fenced_for_s, 3),
            "lease_valid_for_s": round(stats.valid_for_s, 3),
            "lease_ttl_s": self.cluster.lease_ttl_s, "fencing_margin_s": stats.margin_s,
            "holder": holder.site if holder is not None else None,
            "holder_epoch": holder.epoch if holder is not None else None,
            "holder_ttl_s": seen.holder_ttl_s if seen is not None and holder is not None else None,
            "latest_epoch": latest.epoch if latest is not None else None,
            "latest_epoch_site": latest.site if latest is not None else None,
            "outdated": _mark_status(seen.outdated if seen is not None else None),
            "outdates": self.outdates,
            "reason": stats.reason, "etcd_error": self.etcd_error,
            "renew_failures": stats.renew_failures, "automatic_promotions": self.promotions,
            "monotonic_s": now,  # this answer's time on the machine's monotonic clock
        }


def _mark_status(mark: Outdated | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    return {"site": mark.site, "epoch": mark.epoch, "generation": f"{mark.generation:#x}"}


class FencedTarget:
    """The primary's NBD target behind the fence: while the lease is not held (or could have
    expired on etcd's side) a new request (reads too) is answered EIO at once, untouched,
    and an answer of success is turned into EIO (the write may have landed; the host must not
    take it as acknowledged). Each write of a group (``write_many``) is fenced as a lone one."""

    def __init__(self, inner: NbdTarget, may_ack: Callable[[], bool]) -> None:
        self.inner = inner
        self.may_ack = may_ack
        self.size = inner.size
        self.read_only = inner.read_only
        self.refused = 0  # requests answered EIO by the fence
        self._inner_many = group_call(inner)
        self.write_many: WriteMany | None = None if self._inner_many is None else self._write_many

    def _fenced(self, done: Done) -> Done | None:
        if not self.may_ack():
            self.refused += 1
            done(Errno.EIO)
            return None

        def fenced_done(errno: int) -> None:
            if errno == 0 and not self.may_ack():
                self.refused += 1
                errno = Errno.EIO
            done(errno)

        return fenced_done

    def read(self, offset: int, length: int) -> bytes:
        # A fenced site may already be an old primary: its data may be stale. Refuse.
        if not self.may_ack():
            self.refused += 1
            raise StorageError("fenced: this site does not hold the primary lease")
        return self.inner.read(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        return self.inner.extents(offset, length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        fenced = self._fenced(done)
        if fenced is not None:
            self.inner.write(offset, data, fua, fenced)

    def _write_many(self, items: WriteItems) -> None:
        assert self._inner_many is not None  # set only then
        passed = []
        for offset, data, done in items:
            fenced = self._fenced(done)
            if fenced is not None:
                passed.append((offset, data, fenced))
        if passed:
            self._inner_many(passed)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        fenced = self._fenced(done)
        if fenced is not None:
            self.inner.zero(offset, length, fua, may_punch, fast_only, fenced)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        fenced = self._fenced(done)
        if fenced is not None:
            self.inner.trim(offset, length, fua, fenced)

    def flush(self, done: Done) -> None:
        fenced = self._fenced(done)
        if fenced is not None:
            self.inner.flush(fenced)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.inner.cache(offset, length, done)
