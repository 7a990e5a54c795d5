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

**The link between the sites** (outdate) goes down and up by itself. A secondary linked to the
primary of its epoch catches up after a while (a resync pass ends: it claims the primary's data
generations, generations.py). A primary whose secondary holds its data acknowledges writes with
it (sync mode); one that is not linked, or whose secondary is behind, acknowledges them alone,
in a data generation its secondary lacks: it opens one (as the daemon's ``PersistGeneration``)
and marks the secondary outdated in etcd first (``OUTDATE``, a compare on the revision of etcd's
epoch record last read, as daemon/cluster.py's ``outdate``). A crash loses a generation whose
mark was written but that was never stored. Each primary's generations are the real part
(replication/generations.py); storing one may fail after its mark and be retried later
without a second mark (daemon/primary.py), and a pass may end meanwhile (the link came back). Each site's etcd requests are serialised (the daemon's ``_etcd_lock``).

**Invariants** (checked after every step):

1. No acknowledgment after the lease is lost: a site acknowledges only while etcd holds its
   lease on the ``primary`` key naming it.
2. At most one writable primary per epoch: every acknowledgment of epoch N comes from the one
   site that registered epoch N in etcd, and each epoch is registered once.

3. A secondary whose copy is known to be older than its primary's (stale extents from an
   interrupted resync) never promotes itself: the writes that resync was bringing would be lost.
4. An automatic promotion never loses a write acknowledged in sync mode: the promoted copy holds
   every data generation in which the primary of the epoch it replaces acknowledged writes
   alone.
5. While the primary of etcd's latest epoch has acknowledged writes alone in a generation its
   secondary lacks, the ``outdated`` mark names that epoch and a generation the secondary lacks
   (checked after every step, so it does not wait for a crash and an expiry to show).

The deliberate bugs ``ack_after_lease_lost``, ``lease_promotes_stale_copy`` and
``promote_outdated_copy`` (faults.py) must trip invariants 1, 3 and 4.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.replication.epochs import Lineage
from foresync.replication.generations import Generations
from foresync.replication.lease import Action, LeaseCore, Local, Outdated, Record, Seen

DRIFT = 0.005  # each site's clock runs at 1 +- this
RPC_TIMEOUT_S = 1.5
OUTDATE = "outdate"  # the primary's mark, before it answers writes alone (not a core Action)


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
    outdated: Outdated | None = None
    outdated_rev: int = 0

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
    kind: Action | str | None  # None: a read; OUTDATE
    sent_local: float
    arrive_at: float
    reply_at: float
    applied: bool = False
    answer: object = None
    lost: bool = False
    replaced: Record | None = None  # PROMOTE: etcd's epoch record it replaced
    generation: int = 0  # OUTDATE: the generation the mark names
    versions: tuple[int, int, int] = (0, 0, 0)


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
        self.versions = (0, 0, 0)
        self.generations: tuple[int, ...] = (epoch_id,)  # the data it holds (its lineage's)
        self.faults = faults
        self._ids = rng
        # A primary's generations: the real part (generations.py), its stored lineage ours.
        self.gens: Generations[None] = self._generations()
        self.token = 0  # the generation being stored (``gens.next``): its PersistGeneration's
        self.marked: int | None = None  # its mark stands, its store failed (the daemon's _outdated)
        self.outdate_at = 0.0  # local time: a failed mark is tried again from then on

    def _generations(self) -> Generations[None]:
        return Generations(Lineage((self.epoch_id,), self.generations),
                           lambda: self._ids.randrange(1, 1 << 62), self._persisting, self.faults)

    def _persisting(self, token: int, lineage: Lineage) -> None:
        self.token = token

    def forget_generations(self) -> None:
        """Memory lost (a crash) or a new role: the part restarts from what is stored."""
        self.gens = self._generations()
        self.marked = None

    @property
    def storing(self) -> int | None:
        """The generation opened and not yet stored: its mark, then it is ours."""
        nxt = self.gens.next
        return None if nxt is None else nxt.data[-1]

    def stored(self) -> None:
        """The generation's store succeeded (after its mark): its held writes may be answered."""
        self.gens.persisted(self.token)
        self.generations = self.gens.lineage.data
        self.marked = None

    def clock(self, now: float) -> float:
        return self.offset + self.rate * now

    def local(self) -> Local:
        return Local(self.role, self.epoch, self.epoch_id, self.refusal, self.stale,
                     generations=self.generations,
                     peer_holds_ours=self.gens.claimed)


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
        self.link_up = True
        self.alone: dict[int, set[int]] = {}  # epoch id -> generations with writes acked alone
        self.alone_acks = 0
        self.outdates = 0
        self.outdated_refusals = 0  # a secondary's reads that found its copy outdated
        # A generation's store failing after its mark (retried, no second mark) and passes
        # ending meanwhile: their own RNG, so the schedules of the other events stay as they were.
        self.store_rng = random.Random(seed * 31 + 5)
        self.store_failures = 0

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
            self._catch_up()
            self._writes()
            self._check_marked()

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
            site.forget_generations()  # a generation marked, never stored, is lost
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
        elif roll < 0.06:
            self.link_up = not self.link_up
            self._log(f"link {'up' if self.link_up else 'cut'}")

    # -- one site's round -----------------------------------------------------------------------

    def _drive(self, site: _Site) -> None:
        local_now = site.clock(self.now)
        request = site.request
        if request is not None:
            self._progress(site, request, local_now)
            return
        site.core.local_changed(site.local())
        action = site.core.next_action(local_now)
        if (site.storing is not None and site.marked == site.storing
                and self.store_rng.random() < 0.05):
            site.stored()  # the retried store succeeds (daemon/primary.py, no second mark)
            self._log(f"{site.name}: stored generation {len(site.generations)} on a retry")
        if (site.storing is not None and site.marked != site.storing and site.role == "primary"
                and action is not Action.RENEW and local_now >= site.outdate_at):
            self._send(site, OUTDATE, local_now)  # the writes wait for it (daemon/primary.py)
            return
        if local_now < site.next_round:
            return
        kind = Action.RENEW if action is Action.RENEW else None
        self._send(site, kind, local_now)

    def _send(self, site: _Site, kind: Action | str | None, local_now: float) -> None:
        arrive = self.now + self.rng.uniform(0.001, 0.3)
        site.request = _Request(kind, local_now, arrive, arrive + self.rng.uniform(0.001, 0.3),
                                generation=site.storing or 0, versions=site.versions)

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
            elif request.kind == OUTDATE:
                site.outdate_at = local_now + 0.5
            self._next_round(site, local_now)
            return
        site.request = None
        self._answered(site, request, local_now)

    def _apply(self, site: _Site, request: _Request) -> object:
        etcd = self.etcd
        if request.kind is None:
            request.versions = (etcd.epoch_rev, etcd.revision if etcd.primary else 0,
                                etcd.outdated_rev)
            ttl = etcd.leases.get(etcd.primary_lease, self.now) - self.now
            return Seen(etcd.epoch, etcd.primary, max(0.0, ttl), etcd.outdated)
        if request.kind == OUTDATE:
            mark = site.core.outdate_mark(request.generation)  # decided as it was sent
            if mark is None or etcd.epoch_rev != request.versions[0]:
                return False
            etcd.revision += 1
            etcd.outdated, etcd.outdated_rev = mark, etcd.revision
            return True
        if request.kind is Action.CLEAR_OUTDATED:
            if etcd.outdated_rev == site.versions[2]:
                etcd.outdated, etcd.outdated_rev = None, 0
                self._log(f"{site.name}: cleared the outdated mark")
            return None
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
            ok = (etcd.epoch_rev == site.versions[0] and etcd.primary is None
                  and etcd.outdated_rev == site.versions[2])
            if ok:
                request.replaced = etcd.epoch
                etcd.outdated, etcd.outdated_rev = None, 0
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
        if request.kind == OUTDATE:
            site.outdate_at = local_now + 0.5  # OUTDATE_RETRY_S, if it failed
            if request.answer and site.storing == request.generation:
                site.marked = site.storing
                self.outdates += 1
                self._log(f"{site.name}: marked its secondary outdated, generation "
                          f"{len(site.generations) + 1}")
                if self.store_rng.random() < 0.5:
                    self.store_failures += 1
                    self._log(f"{site.name}: storing the generation failed (retried)")
                else:
                    site.stored()
        elif request.kind is None:
            assert isinstance(request.answer, Seen)
            core.observed(request.answer)
            site.versions = request.versions
            core.local_changed(site.local())  # after the read, as the daemon does
            action = core.next_action(local_now)
            self.outdated_refusals += "this copy is outdated" in core.reason
            if action in (Action.ACQUIRE, Action.PROMOTE, Action.CLEAR_OUTDATED):
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
                self._check_nothing_lost(site, request.replaced)
                if site.stale:
                    raise LeaseFailure(f"invariant 3: site {site.name} promoted itself with "
                                       f"{site.stale} extents older than its primary's (writes "
                                       "that primary acknowledged lost)", self.schedule)
                site.role, site.epoch, site.epoch_id = "primary", new.epoch, new.epoch_id
                site.generations = (*site.generations, new.epoch_id)  # epochs.py ``promoted``
                site.forget_generations()
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
            old.forget_generations()
            self._log(f"{old.name}: steps down to follow {new.name} (epoch {new.epoch})")

    def _check_marked(self) -> None:
        """Invariant 5: while the primary of etcd's latest epoch has acknowledged writes alone in
        a generation its secondary lacks, etcd's ``outdated`` mark names that epoch and a
        generation the secondary lacks (so invariant 4 holds whenever the lease lapses next)."""
        latest = self.etcd.epoch
        if latest is None:
            return
        primary, other = self.sites[latest.site], self.sites["b" if latest.site == "a" else "a"]
        if primary.epoch_id != latest.epoch_id or other.role != "secondary":
            return
        lacking = self.alone.get(latest.epoch_id, set()) - set(other.generations)
        mark = self.etcd.outdated
        if lacking and (mark is None or mark.epoch_id != latest.epoch_id
                        or mark.generation in other.generations):
            raise LeaseFailure(f"invariant 5: site {primary.name} acknowledged writes alone in "
                               f"{len(lacking)} generation(s) site {other.name} lacks, and etcd "
                               f"holds no mark of them ({mark})", self.schedule)

    def _check_nothing_lost(self, site: _Site, replaced: Record | None) -> None:
        """Invariant 4, as ``site`` promotes itself in place of ``replaced``'s epoch."""
        if replaced is None:
            return
        lost = self.alone.get(replaced.epoch_id, set()) - set(site.generations)
        if lost:
            raise LeaseFailure(f"invariant 4: site {site.name} promoted itself without "
                               f"{len(lost)} data generation(s) in which site {replaced.site} "
                               f"acknowledged writes alone (epoch {replaced.epoch}): lost",
                               self.schedule)

    def _linked(self, primary: _Site) -> _Site | None:
        """The secondary the link connects ``primary`` to now, if any."""
        other = self.sites["b" if primary.name == "a" else "a"]
        if (self.link_up and primary.up and other.up and other.role == "secondary"
                and other.epoch_id == primary.epoch_id):
            return other
        return None

    def _catch_up(self) -> None:
        """A linked secondary's resync pass ends now and then: it claims our generations."""
        for site in self.sites.values():
            other = self._linked(site) if site.role == "primary" else None
            if other is None:
                continue
            # A pass may end while a generation is stored (the link came back meanwhile): the
            # secondary then holds the lineage before it (its HELLO's).
            if (self.store_rng.random() >= 0.5 if site.storing is not None else self.rng.random() >= 0.1):
                continue
            if other.generations != site.generations or not site.gens.claimed:
                other.generations, other.stale = site.generations, 0
                site.gens.greeting()
                self._log(f"{other.name}: resync done, holds {len(site.generations)} generations")

    def _writes(self) -> None:
        for site in self.sites.values():
            if not site.up or site.role != "primary":
                continue
            if not site.core.may_ack(site.clock(self.now)):
                continue
            if site.storing is not None:
                continue  # waits for its mark and its store
            if self._linked(site) is None or not site.gens.claimed:  # alone
                if not site.gens.fresh:
                    site.gens.open()
                    continue
                self.alone.setdefault(site.epoch_id, set()).add(site.generations[-1])
                self.alone_acks += 1
            self.acks += 1
            if not self.etcd.holds(site.name, self.now):
                raise LeaseFailure(f"invariant 1: site {site.name} acknowledged a write at "
                                   f"t={self.now:.3f} without a live lease on etcd", self.schedule)
            owner = self.etcd.registered.get(site.epoch)
            if owner is not None and owner != site.name:
                raise LeaseFailure(f"invariant 2: site {site.name} acknowledged a write in epoch "
                                   f"{site.epoch}, registered by {owner}", self.schedule)
