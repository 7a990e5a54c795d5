"""The primary's out-of-sync set and its persistence handshake.

Theory of operation (claims 6-9). The secondary's durable record bounds what host writes can make
differ, but not everything: a write while the link is down, a miss whose ADDED never came, a
local write that failed, a storage failure there. Such extents join the *out-of-sync set*, which
the primary keeps on its own disk; at the next connection they are resynced.

An extent only counts once the set holding it is durable. ``persist`` hands the whole set to the
adapter as ``PersistOutOfSync(token, ...)``, keeping a snapshot per token; ``persisted(token)``
makes that snapshot the durable set (earlier tokens are superseded). A write that may make the
copies differ must not land locally before its extents are durably out-of-sync (``mark``): it
waits, and ``persisted`` releases it once its extents are in the durable set and in every persist
still in flight (a later snapshot may have dropped them again). An extent is also covered while
the secondary durably holds it in a resync set of this pass (``confirmed``: RESYNC_SET_DURABLE),
which releases waiting writes too.

Shrinking is lazy (``dirty``): a larger stored set is only pessimistic, so an extent that left
the set is written back at the next watermark tick, never in the write path. Damaged or lost
storage is recorded as ``everything`` (``full_resync_pending``): the next pass compares every
extent, and the flag goes only when that pass is done.

Pure: the owner emits the PersistOutOfSync action through ``persist_action`` and takes the
writes released as return values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from foresync.errors import invariant
from foresync.record import runs as extent_runs

W = TypeVar("W")  # a write that waits for its extents to be durably out-of-sync


class OutOfSync(Generic[W]):
    def __init__(self, persist_action: Callable[[int, tuple[int, ...], bool], None]) -> None:
        self._persist_action = persist_action  # emits PersistOutOfSync(token, extents, everything)
        self.extents: set[int] = set()  # extents the secondary may lack outside its record
        self.durable: set[int] = set()  # the set as last made durable
        self._tokens = 0
        self._snapshots: dict[int, frozenset[int]] = {}  # persists in flight
        self._waiting: list[tuple[range, W]] = []
        self.dirty = False  # the set shrank since the last persist
        self.everything = False  # every extent may differ (the adapter's full_resync_pending)
        # Resync sets durable on the secondary this session: they cover their extents too.
        self.confirmed: extent_runs.Runs = ()

    def restore(self, extents: set[int]) -> None:
        """At start: the set found on disk."""
        self.extents = set(extents)
        self.durable = set(extents)

    def absorb(self, extents: Iterable[int], everything: bool) -> None:
        """Failback: an old primary's set joins ours (the adapter persists it before answering)."""
        self.extents.update(extents)
        if everything:
            self.everything = True
        self.durable = set(self.extents)

    def settled(self, extents: range) -> bool:
        """Durably out-of-sync, and no persist still in flight will drop them again; or in a
        resync set the secondary holds durably (this session), which covers them as well."""
        pending = self._snapshots.values()
        confirmed = self.confirmed
        durable = self.durable
        return all((e in durable and all(e in snap for snap in pending))
                   or extent_runs.contains(confirmed, e) for e in extents)

    def mark(self, extents: range, waiter: W | None) -> bool:
        """``extents`` may differ: add them. True if they are not settled yet: ``waiter`` then
        waits before it lands here (returned by ``persisted``/``confirm`` once they are)."""
        self.extents.update(extents)
        if self.settled(extents):
            return False
        if waiter is not None:
            self._waiting.append((extents, waiter))
        self.persist()
        return True

    def add(self, extents: Iterable[int]) -> None:
        """Add and persist at once (nothing waits for it)."""
        self.extents.update(extents)
        self.persist()

    def persist(self) -> None:
        self._tokens += 1
        self._snapshots[self._tokens] = frozenset(self.extents)
        self.dirty = False
        self._persist_action(self._tokens, tuple(sorted(self.extents)), self.everything)

    def persist_if_dirty(self) -> None:
        if self.dirty:
            self.persist()

    def persisted(self, token: int) -> list[W]:
        """The persist ``token`` is durable: the writes it releases."""
        snapshot = self._snapshots.pop(token, None)
        invariant(snapshot is not None, f"unknown out-of-sync persist token {token}")
        assert snapshot is not None
        for older in [t for t in self._snapshots if t < token]:
            del self._snapshots[older]
        self.durable = set(snapshot)
        return self._release()

    def confirm(self, runs: extent_runs.Runs) -> list[W]:
        """A resync set is durable on the secondary: it knows it may differ there, so our set
        need not hold those extents (written back lazily). The writes it releases."""
        self.confirmed = extent_runs.union(self.confirmed, runs)
        covered = [e for e in self.extents if extent_runs.contains(runs, e)]
        if not covered:
            return []
        self.extents.difference_update(covered)
        self.dirty = True
        return self._release()

    def discard(self, extent: int) -> None:
        """The extent is covered otherwise now (resynced, or recorded): it leaves, lazily."""
        if extent in self.extents:
            self.extents.discard(extent)
            self.dirty = True

    def _release(self) -> list[W]:
        released: list[W] = []
        waiting, self._waiting = self._waiting, []
        for extents, waiter in waiting:
            if self.settled(extents):
                released.append(waiter)
            else:
                self._waiting.append((extents, waiter))
        return released


def unsynced_extents(out_of_sync: set[int], resyncing: Iterable[int],
                     in_flight: Iterable[range], dirty_in_record: Iterable[int]) -> set[int]:
    """Every extent the secondary may lack that its record might not cover: what a primary
    persists as out-of-sync when it stops. ``in_flight``: the extents of every op not finished;
    ``dirty_in_record``: record extents not yet durable on both sites."""
    pending = set(out_of_sync)
    pending.update(resyncing)
    for extents in in_flight:
        pending.update(extents)
    pending.update(dirty_in_record)
    return pending
