"""The primary lease under the seeded simulator (issue 16, part 3): two sites' real ``LeaseCore``s
(replication/lease.py) against a modelled etcd, with time, expiry, renewal failures, drifting
clocks, partitions from etcd, crashes and the link meeting that demotes an old primary.

**Model.** True time advances in small random steps. etcd holds the ``epoch`` record, the
``primary`` key and its leases, and deletes a key the moment its lease expires (real etcd may
only be later, never earlier). Each site runs its own clock (offset and a rate within
``DRIFT``) and has at most one request to etcd in flight: it reaches etcd after a random delay
and is applied there at once (a read, a grant with a compare-and-swap, a keepalive), and the
answer comes back after another. A site cut off from etcd loses the request, and learns it
only after ``RPC_TIMEOUT_S`` by its own clock, as the daemon does. Hosts write to every site
that is primary and whose core says ``may_ack``: each such write is an acknowledgment.

**Invariants** (checked after every step):

1. No acknowledgment after the lease is lost: a site acknowledges only while etcd holds its
   lease on the ``primary`` key naming it.
2. At most one writable primary per epoch: every acknowledgment of epoch N comes from the one
   site that registered epoch N in etcd, and each epoch is registered once.

3. A secondary whose copy is known to be older than its primary's (stale extents from an
   interrupted resync) never promotes itself: the writes that resync was bringing would be lost.

The deliberate bugs ``ack_after_lease_lost`` and ``lease_promotes_stale_copy`` (faults.py) must
trip invariants 1 and 3.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.replication.lease import Action, LeaseCore, Local, Record, Seen

DRIFT = 0.005  # each site's clock runs at 1 +- this
RPC_TIMEOUT_S = 1.5


class LeaseFailure(Exception):
    def __init__(self, message: str, schedule: list[str]) -> None:
        super().__init__(message)
        self.schedule = schedule


@dataclass
class _Etcd:
    epoch: Record | None = None
    epoch_rev: int = 0
    primary: Record | None = None
    primary_lease: int = 0
    leases: dict[int, float] = field(default_factory=dict)  # id -> expiry (true time)
    revision: int = 0
    next_lease: int = 1
    registered: dict[int, str] = field(default_factory=dict)  # epoch -> site

    def expire(self, now: float) -> None:
        for lease_id, expiry in list(self.leases.items()):
            if expiry <= now:
                del self.leases[lease_id]
                if self.primary_lease == lease_id:
                    self.primary, self.primary_lease = None, 0

    def holds(self, site: str, now: float) -> bool:
        return (self.primary is not None and self.primary.site == site
                and self.leases.get(self.primary_lease, 0.0) > now)


@dataclass
class _Request:
    kind: Action | None  # None: a read
    sent_local: float
    arrive_at: float
    reply_at: float
    applied: bool = False
    answer: object = None
    lost: bool = False
    versions: tuple[int, int] = (0, 0)


class _Site:
    def __init__(self, name: str, role: str, epoch: int, epoch_id: int, ttl: float,
                 rng: random.Random, faults: Faults) -> None:
        self.name = name
        self.core = LeaseCore(name, ttl, faults=faults)
        self.role, self.epoch, self.epoch_id = role, epoch, epoch_id
        self.offset = rng.uniform(0, 100)
        self.rate = 1 + rng.uniform(-DRIFT, DRIFT)
        self.up = True
        self.cut = False
        self.refusal = ""
        self.stale = 0  # extents an interrupted resync left older than the primary's
        self.request: _Request | None = None
        self.next_round = 0.0  # local time
        self.lease_id = 0
        self.versions = (0, 0)

    def clock(self, now: float) -> float:
        return self.offset + self.rate * now

    def local(self) -> Local:
        return Local(self.role, self.epoch, self.epoch_id, self.refusal, self.stale)


class LeaseWorld:
    def __init__(self, seed: int, faults: Faults = NO_FAULTS, steps: int = 600) -> None:
        self.rng = random.Random(seed * 7919 + 16)
        self.seed = seed
        self.steps = steps
        self.ttl = float(self.rng.choice((2, 3, 5)))
        self.now = 0.0
        self.etcd = _Etcd()
        self.sites = {"a": _Site("a", "primary", 1, 101, self.ttl, self.rng, faults),
                      "b": _Site("b", "secondary", 1, 101, self.ttl, self.rng, faults)}
        self.schedule: list[str] = []
        self.acks = 0
        self.promotions = 0

    def _log(self, event: str) -> None:
        self.schedule.append(f"t={self.now:.3f} {event}")

    def run(self) -> None:
        for _ in range(self.steps):
            self.now += self.rng.uniform(0.01, 0.2)
            self.etcd.expire(self.now)
            self._fault()
            for site in self.sites.values():
                if site.up:
                    self._drive(site)
            self._meet()
            self._writes()

    # -- faults ---------------------------------------------------------------------------------

    def _fault(self) -> None:
        rng = self.rng
        roll = rng.random()
        site = self.sites[rng.choice("ab")]
        if roll < 0.01:
            site.cut = not site.cut
            self._log(f"{site.name}: {'cut from' if site.cut else 'back to'} etcd")
        elif roll < 0.014 and site.up:
            site.up = False
            site.request = None
            site.core = LeaseCore(site.name, self.ttl, faults=site.core.faults)  # memory lost
            self._log(f"{site.name}: crash")
        elif roll < 0.03 and not site.up:
            site.up = True
            site.next_round = 0.0
            site.lease_id = 0
            self._log(f"{site.name}: restart as {site.role}")
        elif roll < 0.035 and site.role == "secondary":
            site.refusal = "" if site.refusal else "inconsistent (a resync is running)"
            self._log(f"{site.name}: refusal={site.refusal!r}")
        elif roll < 0.045 and site.role == "secondary" and site.request is None:
            # (Between rounds only: the daemon checks again when it promotes, SecondarySite.promote.)
            # A resync into it interrupted and rolled back (stale extents), or its next pass
            # finished (none): the copy is consistent either way, older in the first case.
            site.stale = 0 if site.stale else rng.randint(1, 256)
            self._log(f"{site.name}: stale extents={site.stale}")

    # -- one site's round -----------------------------------------------------------------------

    def _drive(self, site: _Site) -> None:
        local_now = site.clock(self.now)
        request = site.request
        if request is not None:
            self._progress(site, request, local_now)
            return
        if local_now < site.next_round:
            return
        site.core.local_changed(site.local())
        action = site.core.next_action(local_now)
        kind = Action.RENEW if action is Action.RENEW else None
        self._send(site, kind, local_now)

    def _send(self, site: _Site, kind: Action | None, local_now: float) -> None:
        arrive = self.now + self.rng.uniform(0.001, 0.3)
        site.request = _Request(kind, local_now, arrive, arrive + self.rng.uniform(0.001, 0.3))

    def _progress(self, site: _Site, request: _Request, local_now: float) -> None:
        if not request.applied and self.now >= request.arrive_at:
            request.applied = True
            request.lost = site.cut
            if not request.lost:
                request.answer = self._apply(site, request)
        if self.now < request.reply_at:
            return
        if request.lost or site.cut:
            if local_now < request.sent_local + RPC_TIMEOUT_S:
                return
            site.request = None
            if request.kind is Action.RENEW:
                site.core.renew_failed(local_now, "timeout")
            self._next_round(site, local_now)
            return
        site.request = None
        self._answered(site, request, local_now)

    def _apply(self, site: _Site, request: _Request) -> object:
        etcd = self.etcd
        if request.kind is None:
            request.versions = (etcd.epoch_rev, etcd.revision if etcd.primary else 0)
            ttl = etcd.leases.get(etcd.primary_lease, self.now) - self.now
            return Seen(etcd.epoch, etcd.primary, max(0.0, ttl))
        if request.kind is Action.RENEW:
            if site.lease_id in etcd.leases:
                etcd.leases[site.lease_id] = self.now + self.ttl
                return self.ttl
            return 0.0
        lease_id = etcd.next_lease
        etcd.next_lease += 1
        etcd.leases[lease_id] = self.now + self.ttl
        if request.kind is Action.ACQUIRE:
            ok = etcd.epoch_rev == site.versions[0] and (
                etcd.primary is None or etcd.primary.site == site.name)
            if ok:
                record = Record(site.name, site.epoch, site.epoch_id)
                if etcd.epoch is None:
                    etcd.epoch, etcd.registered[site.epoch] = record, site.name
                etcd.revision += 1
                etcd.epoch_rev = etcd.epoch_rev or etcd.revision
                etcd.primary, etcd.primary_lease = record, lease_id
        else:  # PROMOTE
            assert etcd.epoch is not None
            ok = etcd.epoch_rev == site.versions[0] and etcd.primary is None
            if ok:
                new = Record(site.name, etcd.epoch.epoch + 1, self.rng.randrange(1, 1 << 62))
                if new.epoch in etcd.registered:
                    raise LeaseFailure(f"epoch {new.epoch} registered twice", self.schedule)
                etcd.revision += 1
                etcd.epoch, etcd.epoch_rev, etcd.registered[new.epoch] = new, etcd.revision, site.name
                etcd.primary, etcd.primary_lease = new, lease_id
                request.answer = new
        if not ok:
            del etcd.leases[lease_id]
            return None
        return (lease_id, request.answer)

    def _answered(self, site: _Site, request: _Request, local_now: float) -> None:
        core = site.core
        if request.kind is None:
            assert isinstance(request.answer, Seen)
            core.observed(request.answer)
            site.versions = request.versions
            action = core.next_action(local_now)
            if action in (Action.ACQUIRE, Action.PROMOTE):
                self._send(site, action, local_now)
                return
            if action is Action.RELEASE:
                self.etcd.leases.pop(site.lease_id, None)
                core.released()
        elif request.kind is Action.RENEW:
            assert isinstance(request.answer, float)
            if request.answer <= 0:
                core.lost("expired")
                self._log(f"{site.name}: lease expired on etcd")
            else:
                core.granted(request.sent_local, request.answer)
        elif request.answer is not None:
            assert isinstance(request.answer, tuple)
            site.lease_id, new = request.answer
            core.granted(request.sent_local, self.ttl)
            if isinstance(new, Record):
                if site.stale:
                    raise LeaseFailure(f"invariant 3: site {site.name} promoted itself with "
                                       f"{site.stale} extents older than its primary's (writes "
                                       "that primary acknowledged lost)", self.schedule)
                site.role, site.epoch, site.epoch_id = "primary", new.epoch, new.epoch_id
                self.promotions += 1
                self._log(f"{site.name}: promoted, epoch {new.epoch}")
            else:
                self._log(f"{site.name}: holds the lease, epoch {site.epoch}")
        self._next_round(site, local_now)

    def _next_round(self, site: _Site, local_now: float) -> None:
        site.next_round = site.core.get_timer(local_now)

    # -- the link and the hosts -----------------------------------------------------------------

    def _meet(self) -> None:
        """Two primaries that meet on the link: the older epoch steps down (epochs.py)."""
        a, b = self.sites["a"], self.sites["b"]
        if a.up and b.up and a.role == b.role == "primary" and self.rng.random() < 0.2:
            old, new = (a, b) if a.epoch < b.epoch else (b, a)
            old.role, old.epoch, old.epoch_id = "secondary", new.epoch, new.epoch_id
            self._log(f"{old.name}: steps down to follow {new.name} (epoch {new.epoch})")

    def _writes(self) -> None:
        for site in self.sites.values():
            if not site.up or site.role != "primary":
                continue
            if not site.core.may_ack(site.clock(self.now)):
                continue
            self.acks += 1
            if not self.etcd.holds(site.name, self.now):
                raise LeaseFailure(f"invariant 1: site {site.name} acknowledged a write at "
                                   f"t={self.now:.3f} without a live lease on etcd", self.schedule)
            owner = self.etcd.registered.get(site.epoch)
            if owner is not None and owner != site.name:
                raise LeaseFailure(f"invariant 2: site {site.name} acknowledged a write in epoch "
                                   f"{site.epoch}, registered by {owner}", self.schedule)
