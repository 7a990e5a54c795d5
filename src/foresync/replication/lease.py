"""The primary lease on etcd (issue 16, part 3): who may acknowledge writes, and when a secondary
takes over by itself. The one place these decisions are made; pure, with time passed in. The
daemon's adapter (daemon/cluster.py) carries out the actions against etcd (daemon/etcd.py), and
the simulator (testing/sim/lease.py) drives the same core against a modelled etcd.

**Keys.** Per volume, under ``/foresync/<cluster>/volumes/<volume>/`` (a consistency group's unit
uses the same keys under its group name in place of ``<volume>``):

* ``epoch``: ``{"site", "epoch", "epoch_id"}``, with no lease: the latest epoch and the site it
  was registered by. It only changes by a compare-and-swap on its ``mod_revision``, so each epoch
  number is registered once, by one site: two primaries can never share an epoch.
* ``primary``: the same fields, attached to the holder's lease: the site allowed to acknowledge
  writes. etcd deletes it when the lease expires.
* ``outdated``: ``{"site", "epoch", "epoch_id", "generation"}``, with no lease: the primary of
  that epoch answers writes its secondary may lack, in data generation ``generation``
  (epochs.py). DRBD's "outdate-peer" on etcd: with ``fencing resource-only`` (or
  ``resource-and-stonith``) DRBD freezes I/O at a disconnect until its ``fence-peer`` handler
  (``crm-fence-peer.sh``) has marked the peer Outdated, and ``after-resync-target`` unfences it.

**Primary.** A site whose metadata says primary acquires the lease when etcd's epoch record is
its own epoch (``epoch_id`` equal: it restarted, or the lease lapsed while etcd was away) or when
there is no record yet (the cluster's first start registers the site's current epoch). A record
of another epoch means a newer primary exists: this site never acquires, stays fenced, and waits
to be told to step down on the link (the failback, as without a cluster).

**Fencing.** A renewal sent at ``sent`` (our monotonic clock) and answered keeps the lease alive
on the etcd side until at least ``sent + ttl`` by etcd's clock. We acknowledge writes only until
``sent + ttl - margin``: the margin covers the two clocks' rates differing (``drift`` of the
lease, 1 % by default; monotonic clocks under NTP slew at most 0.05 %) and the time an answer
takes from the decision to the host's socket, and is at least 1 s. With ``lease_ttl = "5s"``: we
stop acknowledging 4 s after the last renewal that etcd answered was sent, and renew every
``ttl / 3``, so two renewals in a row may fail before the fence falls. A lease etcd reports gone
(a keepalive answered with TTL 0) fences at once.

**Outdate.** A primary answers no write its secondary may lack (one answered while the link is
down, or in flight when it fell: generations.py opens a data generation for exactly those,
once per disconnection) before ``outdated`` names that generation in etcd. The adapter writes
the mark (``outdate_mark``) before it stores the generation, only while etcd's ``epoch`` record is
still ours (a compare on the revision read), and retries until it succeeds: meanwhile the writes wait (and with etcd away the
lease fences them anyway). A crash between the mark and the answer leaves a mark naming writes
that may never have been answered: doubt widens to the safe side. The mark is cleared
(``CLEAR_OUTDATED``, a compare-and-swap on the revision just read) once the secondary holds our
newest generation (a resync pass ended with RESYNC_DONE since it started), whatever the mark
names; a mark written after that read fails the swap and stands. So automatic failover loses
only what the mode loses while the link is up (``sync``: nothing acknowledged; ``lookahead`` and
``async``: answered writes still on their way, docs/operations.md section 6), never a write
answered without the secondary.

**Secondary.** It reads the keys every ``poll_s``. It promotes itself only when the ``primary``
key is absent (the lease expired or was revoked, as etcd itself decides), its copy follows the
epoch etcd records last (its lineage's last epoch id is the record's; otherwise it may lack that
primary's writes), and its copy may be promoted (``refusal`` empty: consistent, not mid-resync,
metadata intact), and its copy is not known to be older than its primary's (``behind_reason``:
no extents left stale by an interrupted resync, no rollback of one pending), and its copy is not
outdated (``outdated_reason``: no ``outdated`` mark of the epoch etcd records naming a data
generation its lineage lacks). Otherwise it says why (``reason``). Its promotion takes the lease
first, by a compare-and-swap on the ``epoch`` record and the ``outdated`` mark it read (and
deletes the mark, which named the old epoch), and only then writes its new role.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from foresync.faults import NO_FAULTS, Faults

DRIFT_DEFAULT = 0.01  # the clock-rate difference the margin allows for, as a fraction of the ttl
MARGIN_MIN_S = 1.0  # never less than this between our fence and etcd's expiry
RENEWS_PER_TTL = 3


def fencing_margin(ttl_s: float, drift: float = DRIFT_DEFAULT) -> float:
    """How long before etcd could expire our lease we stop acknowledging writes (see the notes)."""
    return max(MARGIN_MIN_S, 2 * drift * ttl_s, 0.2 * ttl_s)


class Action(Enum):
    NONE = "none"
    ACQUIRE = "acquire"  # a primary takes (or re-takes) the lease for its own epoch
    RENEW = "renew"  # a keepalive of the lease we hold
    PROMOTE = "promote"  # a secondary takes the lease for a new epoch, then promotes itself
    RELEASE = "release"  # we hold a lease we no longer need (we became secondary)
    CLEAR_OUTDATED = "clear_outdated"  # the secondary holds all our data again: drop the mark


@dataclass(frozen=True, slots=True)
class Record:
    """The value of the ``epoch`` or the ``primary`` key."""

    site: str
    epoch: int
    epoch_id: int


@dataclass(frozen=True, slots=True)
class Outdated:
    """The value of the ``outdated`` key: the primary of this epoch answers writes its secondary
    may lack, from data generation ``generation`` (an id of its lineage, epochs.py) on."""

    site: str
    epoch: int
    epoch_id: int
    generation: int


@dataclass(frozen=True, slots=True)
class Seen:
    """The keys as one linearizable read found them (``None``: absent)."""

    epoch: Record | None
    holder: Record | None
    holder_ttl_s: float = 0.0  # the holder's remaining lease, as etcd said
    outdated: Outdated | None = None


@dataclass(frozen=True, slots=True)
class Local:
    """What the site is now: its role, its lineage's last epoch, and why it may not be promoted."""

    role: str  # "primary" | "secondary"
    epoch: int
    epoch_id: int  # 0: no lineage yet (a new secondary)
    refusal: str = ""
    # Known to lack the primary's data: extents an interrupted resync left older than the
    # primary's (site.json ``stale``, after a rollback), or a rollback of one still to run.
    stale_extents: int = 0
    rollback_pending: bool = False
    generations: tuple[int, ...] = ()  # the data generations this copy holds (its lineage's)
    # A primary: its secondary holds every generation of ours (a resync pass ended since our
    # newest started), so no write it lacks was answered since: the ``outdated`` mark may go.
    peer_holds_ours: bool = False


def outdated_reason(mark: Outdated | None, latest: Record, generations: tuple[int, ...],
                    faults: Faults = NO_FAULTS) -> str:
    """Why a secondary's copy is outdated by ``mark`` ("" if it is not): the primary of etcd's
    latest epoch answered writes, from a data generation this copy does not hold, without it. A
    mark of another epoch is an old primary's, whose writes the new one's data already decided."""
    if faults.promote_outdated_copy:  # deliberate bug: the mark is not honoured
        return ""
    if mark is None or mark.epoch_id != latest.epoch_id or mark.generation in generations:
        return ""
    return (f"site {mark.site} (epoch {mark.epoch}) answered writes without this site (its data "
            f"generation {mark.generation:#x}, which this copy does not hold): promoting it would "
            "lose them")


def behind_reason(stale_extents: int, rollback_pending: bool, faults: Faults = NO_FAULTS) -> str:
    """Why a secondary whose copy is known to be older than its primary's must not promote
    ITSELF ("" if it is not known to be): a resync was bringing it the primary's writes when it
    stopped, so those writes (acknowledged by the primary, in sync mode too) are on the primary
    only. A person may still promote it by hand (``foresync promote``), accepting the loss; the
    lease never does, so a primary that only restarts finds its writes where it left them."""
    if faults.lease_promotes_stale_copy:  # deliberate bug: a known-older copy promotes itself
        return ""
    if rollback_pending:
        return ("a resync into it was interrupted: it would roll back to an older copy that lacks "
                "writes the primary acknowledged")
    if stale_extents:
        return (f"{stale_extents} of its extents are older than the primary's (a resync "
                "into it was interrupted and rolled back): it lacks writes the primary acknowledged")
    return ""


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    holding: bool  # we hold the lease and it is still valid by our own deadline
    may_ack: bool
    fenced_for_s: float  # how long we have not been allowed to ack (0: we may)
    valid_for_s: float  # our own deadline, minus now (0 when not holding)
    margin_s: float
    reason: str  # why not promoting / why fenced ("" : nothing to say)
    renew_failures: int
    seen: Seen | None


class LeaseCore:
    def __init__(self, site: str, ttl_s: float, drift: float = DRIFT_DEFAULT,
                 faults: Faults = NO_FAULTS) -> None:
        if ttl_s < 2:
            raise ValueError(f"lease ttl {ttl_s} s: at least 2 s")
        self.site = site
        self.ttl_s = ttl_s
        self.margin_s = fencing_margin(ttl_s, drift)
        self.renew_every_s = ttl_s / RENEWS_PER_TTL
        self.poll_s = min(0.5, ttl_s / 10)
        self.faults = faults
        self.local = Local("secondary", 0, 0)
        self.seen: Seen | None = None
        self.holding = False
        self._valid_until = 0.0  # we may ack while now < this (and holding)
        self._last_sent = 0.0  # when the last successful renewal or acquire was sent
        self._retry_at = 0.0  # after a failed renewal, not before this (one try per poll_s)
        self._fenced_at: float | None = None
        self._ever_held = False
        self.renew_failures = 0
        self.reason = ""

    # -- inputs ---------------------------------------------------------------------------------

    def local_changed(self, local: Local) -> None:
        self.local = local

    def observed(self, seen: Seen) -> None:
        """A read of both keys. A record of another epoch while we hold the lease means someone
        took over (never while etcd keeps its promises): fence now."""
        self.seen = seen
        if self.holding and seen.epoch is not None and seen.epoch.epoch_id != self.local.epoch_id:
            self.lost(f"etcd's latest epoch is now {seen.epoch.epoch} (site {seen.epoch.site})")

    def granted(self, sent_at: float, ttl_s: float) -> None:
        """An acquire, a promote or a renewal sent at ``sent_at`` was answered: etcd keeps the
        lease until at least ``sent_at + ttl_s`` by its clock."""
        ttl = min(ttl_s, self.ttl_s)
        self.holding = True
        self._ever_held = True
        self._last_sent = max(self._last_sent, sent_at)
        self._valid_until = max(self._valid_until, sent_at + ttl - self.margin_s)
        self.renew_failures = 0

    def renew_failed(self, now: float, reason: str) -> None:
        """No answer (etcd down or unreachable): the deadline stands and runs out by itself;
        the next try comes ``poll_s`` later."""
        self.renew_failures += 1
        self._retry_at = now + self.poll_s
        self.reason = f"cannot renew the lease: {reason}"

    def lost(self, reason: str) -> None:
        """etcd says the lease is gone (or another site holds the key): fence at once."""
        self.holding = False
        self._valid_until = 0.0
        self.reason = f"lease lost: {reason}"

    def released(self) -> None:
        self.holding = False
        self._valid_until = 0.0

    def outdate_mark(self, generation: int) -> Outdated | None:
        """The ``outdated`` value a primary writes before it answers writes of ``generation``
        without its secondary (see the notes); None while etcd's epoch record, as last read, is
        not ours (not read yet, or a newer primary exists). The write compares the record's
        revision with that read's: a record changed since makes it fail, never succeed."""
        seen = self.seen
        if seen is None or seen.epoch is None or seen.epoch.epoch_id != self.local.epoch_id:
            return None
        return Outdated(self.site, self.local.epoch, self.local.epoch_id, generation)

    # -- outputs --------------------------------------------------------------------------------

    def may_ack(self, now: float) -> bool:
        """The fence: may a write be acknowledged (or a new one accepted) now?"""
        if self.faults.ack_after_lease_lost and self._ever_held:
            return True  # deliberately wrong: see faults.py
        allowed = self.holding and now < self._valid_until
        if allowed:
            self._fenced_at = None
        elif self._fenced_at is None:
            self._fenced_at = now
        return allowed

    def next_action(self, now: float) -> Action:
        if self.local.role == "primary":
            return self._primary_action(now)
        if self.holding:
            return Action.RELEASE
        return self._secondary_action()

    def _primary_action(self, now: float) -> Action:
        seen = self.seen
        if self.holding:
            due = max(self._last_sent + self.renew_every_s, self._retry_at)
            if now >= due:
                return Action.RENEW
            if seen is not None and seen.outdated is not None and self.local.peer_holds_ours:
                return Action.CLEAR_OUTDATED
            return Action.NONE
        if seen is None:
            return Action.NONE
        if seen.epoch is not None and seen.epoch.epoch_id != self.local.epoch_id:
            self.reason = (f"etcd records a later epoch {seen.epoch.epoch} of site "
                           f"{seen.epoch.site}: this primary is outdated and stays fenced until "
                           "the newer primary tells it to step down")
            return Action.NONE
        if seen.holder is not None and seen.holder.site != self.site:
            self.reason = f"site {seen.holder.site} holds the lease"
            return Action.NONE
        return Action.ACQUIRE

    def _secondary_action(self) -> Action:
        seen = self.seen
        if seen is None:
            self.reason = "etcd has not been read yet"
            return Action.NONE
        if seen.epoch is None:
            self.reason = "no primary has registered an epoch in etcd yet"
            return Action.NONE
        if seen.holder is not None:
            self.reason = ""
            return Action.NONE
        if self.local.epoch_id != seen.epoch.epoch_id:
            self.reason = (f"the primary's lease expired, but this copy does not follow etcd's "
                           f"latest epoch {seen.epoch.epoch} (site {seen.epoch.site}; ours is "
                           f"{self.local.epoch}): it may lack that primary's writes; not promoting")
            return Action.NONE
        if self.local.refusal:
            self.reason = f"the primary's lease expired, but this copy may not be promoted: " \
                          f"{self.local.refusal}"
            return Action.NONE
        behind = behind_reason(self.local.stale_extents, self.local.rollback_pending, self.faults)
        if behind:
            self.reason = (f"the primary's lease expired, but this copy does not promote itself: "
                           f"{behind}; waiting for that primary to return (or promote by hand)")
            return Action.NONE
        outdated = outdated_reason(seen.outdated, seen.epoch, self.local.generations, self.faults)
        if outdated:
            self.reason = (f"the primary's lease expired, but this copy is outdated: {outdated}; "
                           "waiting for that primary to return (or delete the outdated key by "
                           "hand to accept the loss)")
            return Action.NONE
        self.reason = ""
        return Action.PROMOTE

    def get_timer(self, now: float) -> float:
        """When to call ``next_action`` again: the next renewal, the fence, or the next poll."""
        deadline = now + self.poll_s
        if self.holding:
            due = max(self._last_sent + self.renew_every_s, self._retry_at)
            deadline = min(deadline, max(now, due))
            if self._valid_until > now:
                deadline = min(deadline, self._valid_until)
        return deadline

    def statistics(self, now: float) -> LeaseStatistics:
        may = self.may_ack(now)
        fenced_for = 0.0 if may or self._fenced_at is None else now - self._fenced_at
        return LeaseStatistics(
            holding=self.holding and now < self._valid_until, may_ack=may, fenced_for_s=fenced_for,
            valid_for_s=max(0.0, self._valid_until - now) if self.holding else 0.0,
            margin_s=self.margin_s, reason=self.reason, renew_failures=self.renew_failures,
            seen=self.seen)
