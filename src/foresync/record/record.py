"""The primary's copy of the record, and how it chooses what to evict (claims 10-17).

Theory of operation. The secondary owns the durable record; the primary keeps a copy so it can
decide hit or miss without a round trip (claim 10). Every extent also carries the sequence number
of the latest write to it. An extent is *clean* when that write is durable on both sites: the
secondary has reported a durable watermark at or past it (claim 14) and the primary's own
fdatasync has covered it (otherwise a primary crash could lose the local copy of a write the
secondary kept, leaving a difference no record covers). Only clean extents may be evicted.

The record is bounded by ``capacity``. Before a miss goes out, the primary reserves room for the
extents the secondary may add (the touched ones plus the predicted ones), evicting clean extents
if needed: ``lru`` removes the least-recently-added ones one at a time (claim 15); ``generations``
groups additions into generations of ``generation_size`` extents in order of adding and removes a
whole generation once every extent in it is clean (claim 16); ``s3fifo`` (not a claimed
policy) follows recency and frequency of writes (eviction.py); ``streams`` (the default) follows
whichever of lru and a stream-aware s3fifo regrets less (streams.py). When nothing is clean the
miss waits for the watermark; the record never overflows and never drops a dirty extent.

Free slots ready (issue 14, free_slots.py): while misses have had to wait for room, the owner
keeps a few slots free ahead of need. ``choose_ahead`` picks clean extents for it (the policy's
own choice, as a miss would; ``generations`` still whole generations only, claim 16), and
``room_for_miss``'s ``spare`` keeps a miss's predictions from taking those slots: a guess about
the future never makes the next real miss wait for the watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from enum import Enum

from foresync.errors import LocalProtocolError, invariant
from foresync.record.adaptive import Adaptive
from foresync.record.eviction import S3Fifo
from foresync.record.streams import Streams

# A latest-write seq above any real one: "dirty until resynced". An extent marked so stays dirty
# whatever host writes it gets meanwhile, until its resync data is sent (``resynced``): a host
# write covers only its own bytes, not the rest of an extent the secondary may lack.
UNSENT = 1 << 62


class Eviction(Enum):
    LRU = "lru"  # least-recently-added (claim 15)
    GENERATIONS = "generations"  # whole generations in order of adding (claim 16)
    S3FIFO = "s3fifo"  # recency and frequency of writes (eviction.py)
    ADAPTIVE = "adaptive"  # follows whichever of s3fifo and lru missed less lately (adaptive.py)
    STREAMS = "streams"  # adaptive, its s3fifo demoting what sequential streams passed (streams.py)


@dataclass(frozen=True, slots=True)
class RecordStatistics:
    extents: int
    capacity: int
    reserved: int
    generations: int
    evicted_total: int
    ghosts: int = 0  # s3fifo: extents recently evicted and remembered
    ghost_hits: int = 0  # s3fifo: additions of an extent evicted too early


class RecordCopy:
    def __init__(self, capacity: int, eviction: Eviction, generation_size: int | None = None,
                 evict_dirty: bool = False, extent_size: int = 0) -> None:
        if capacity < 1:
            raise LocalProtocolError("record capacity must be at least 1")
        self.capacity = capacity
        self.eviction = eviction
        # The policy's queues; None for the claimed policies, which need only the order of adding.
        self._s3: S3Fifo | Adaptive | None = (
            S3Fifo(capacity) if eviction is Eviction.S3FIFO
            else Adaptive(capacity) if eviction is Eviction.ADAPTIVE else None)
        # ``streams`` sees where each write starts and ends (``note_write``'s offset), in bytes:
        # ``extent_size`` maps them to extents. Without it (0) it behaves as ``adaptive``.
        self._streams: Streams | None = None
        self._streamed: Callable[[int, int], None] | None = None  # its hook, when it has offsets
        if eviction is Eviction.STREAMS:
            self._s3 = self._streams = Streams(capacity, extent_size or 1)
            if extent_size:
                self._streamed = self._streams.streamed_hook()
        self._evict_dirty = evict_dirty  # faults.<policy>_evicts_dirty: deliberately wrong
        self.generation_size = generation_size or max(1, capacity // 8)
        self._generation_of: dict[int, int] = {}  # extent -> generation; dict order = order added
        self._generations: dict[int, set[int]] = {}  # generation -> its extents; oldest first
        self._current = 0
        self._last_seq: dict[int, int] = {}  # extent -> seq of the latest write to it
        self.reserved = 0
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._generation_of)

    def __contains__(self, extent: object) -> bool:
        return extent in self._generation_of

    def extents(self) -> list[int]:
        return sorted(self._generation_of)

    def covers(self, extents: Iterable[int]) -> bool:
        members = self._generation_of
        return all(extent in members for extent in extents)

    def free(self) -> int:
        return self.capacity - len(self._generation_of) - self.reserved

    def note_write(self, extents: Iterable[int], seq: int, offset: int | None = None,
                   length: int = 0) -> None:
        """``seq`` wrote ``extents`` (or, with ``UNSENT``, they await a resync). An ``UNSENT``
        mark stays until ``resynced``. A host write gives its ``offset`` and ``length`` in bytes
        too, for ``streams`` (resync data does not: it is no stream of the host's)."""
        last = self._last_seq
        if self._s3 is not None and seq != UNSENT:
            extents = tuple(extents)
            self._s3.written(extents, seq)
            if self._streamed is not None and offset is not None:
                self._streamed(offset, length)
        for extent in extents:
            if last.get(extent) != UNSENT:
                last[extent] = seq

    def resynced(self, extent: int, seq: int) -> None:
        """The extent's resync data went out as ``seq`` (or, with a seq already durable, it was
        found identical there): it is dirty until ``seq`` is durable on both sites."""
        self._last_seq[extent] = seq

    def clear_marks(self, seq: int) -> None:
        """Every ``UNSENT`` mark becomes ``seq``: a new session decides afresh what to resync
        (and marks it again), so a mark left by a broken session never pins an extent."""
        last = self._last_seq
        for extent in [e for e, s in last.items() if s == UNSENT]:
            last[extent] = seq

    def last_seq(self, extent: int) -> int:
        return self._last_seq.get(extent, 0)

    def dirty_extents(self, durable_through: int) -> set[int]:
        """Extents whose latest write is past ``durable_through`` (tracked in every mode)."""
        return {e for e, seq in self._last_seq.items() if seq > durable_through}

    def is_clean(self, extent: int, clean_through: int) -> bool:
        return self._last_seq.get(extent, 0) <= clean_through

    def add(self, extents: Iterable[int]) -> None:
        for extent in extents:
            if extent in self._generation_of:
                continue
            group = self._generations.get(self._current)
            if group is None:
                group = self._generations[self._current] = set()
            elif len(group) >= self.generation_size:
                self._current += 1
                group = self._generations[self._current] = set()
            group.add(extent)
            self._generation_of[extent] = self._current
            if self._s3 is not None:
                self._s3.added(extent)
        invariant(len(self._generation_of) <= self.capacity,
                  f"record holds {len(self._generation_of)} extents, capacity {self.capacity}")

    def remove(self, extents: Iterable[int]) -> None:
        for extent in extents:
            generation = self._generation_of.pop(extent, None)
            if generation is None:
                continue
            if self._s3 is not None:
                self._s3.removed(extent)
            group = self._generations[generation]
            group.discard(extent)
            if not group:
                del self._generations[generation]

    def replace(self, extents: Iterable[int]) -> None:
        """Adopt the secondary's record wholesale (after a connect), as one old generation."""
        s3 = self._s3
        if s3 is not None:
            for extent in self._generation_of:
                s3.removed(extent)
        self._generation_of.clear()
        self._generations.clear()
        self.reserved = 0
        self._current += 1
        adopted = sorted(extents)
        self._s3 = None  # not new additions: queued below as old ones, no ghost consulted
        try:
            self.add(adopted)
        finally:
            self._s3 = s3
        if s3 is not None:
            s3.adopted(adopted)
        self._current += 1

    def forget_clean(self, clean_through: int) -> None:
        """Drop write sequence numbers that no longer matter, to bound memory."""
        stale = [e for e, seq in self._last_seq.items() if seq <= clean_through and e not in self._generation_of]
        for extent in stale:
            del self._last_seq[extent]

    def choose_evictions(self, needed: int, clean_through: int,
                         keep: Container[int] = ()) -> list[int] | None:
        """Extents to remove so ``needed`` more slots are free, or None if not possible yet.

        ``keep`` are extents that must stay: the ones the miss making room is about to write. If
        such an extent were evicted, the secondary would drop it and then have to add it back as
        a touched extent, beyond the budget the primary reserved for the miss.

        Nothing is removed here: the caller removes them from the copy, then tells the secondary.
        """
        shortfall = needed - self.free()
        if shortfall <= 0:
            return []
        chosen: list[int] = []
        if self._s3 is not None:
            last, members = self._last_seq, self._generation_of
            if self._evict_dirty:
                return self._s3.choose(shortfall, members.__contains__, keep)  # see faults.py
            return self._s3.choose(shortfall, lambda e: last.get(e, 0) <= clean_through, keep)
        if self.eviction is Eviction.LRU:
            for extent in self._generation_of:
                if self._last_seq.get(extent, 0) <= clean_through and extent not in keep:
                    chosen.append(extent)
                    if len(chosen) >= shortfall:
                        return chosen
            return None
        for group in self._generations.values():
            if all(self._last_seq.get(e, 0) <= clean_through and e not in keep for e in group):
                chosen.extend(sorted(group))
                if len(chosen) >= shortfall:
                    return chosen
        return None

    def choose_ahead(self, wanted: int, clean_through: int) -> list[int]:
        """Up to ``wanted`` clean extents to evict ahead of need (the policy's usual choice; for
        ``generations`` whole clean generations, which may overshoot by one). Nothing is removed
        here: the caller evicts them and tells the secondary."""
        if wanted <= 0:
            return []
        last = self._last_seq
        if self._s3 is not None:
            if self._evict_dirty:
                return self._s3.choose(wanted, self._generation_of.__contains__, (), True) or []
            return self._s3.choose(wanted, lambda e: last.get(e, 0) <= clean_through, (), True) or []
        chosen: list[int] = []
        if self.eviction is Eviction.LRU:
            for extent in self._generation_of:
                if len(chosen) >= wanted:
                    break
                if last.get(extent, 0) <= clean_through:
                    chosen.append(extent)
            return chosen
        for group in self._generations.values():
            if len(chosen) >= wanted:
                break
            if all(last.get(e, 0) <= clean_through for e in group):
                chosen.extend(sorted(group))
        return chosen

    def room_for_miss(self, touched: range, lookahead: int, clean_through: int,
                      spare: int = 0) -> tuple[int, list[int]] | None:
        """(budget, extents to evict) for a miss on ``touched``: room for its new extents plus
        ``lookahead`` predictions if clean extents allow with ``spare`` slots left free after
        them, else for its new extents alone (leaving ``spare`` free if it can); None: not even
        that yet, the miss waits for the watermark. The primary and ``foresync tune``
        (replay.py) both decide a miss here."""
        new = sum(1 for e in touched if e not in self._generation_of)
        budget = min(new + lookahead, self.capacity)
        evict = self.choose_evictions(min(budget + spare, self.capacity), clean_through, touched)
        if evict is None or budget == new:
            budget = new  # without predictions, before waiting
            if evict is None and spare:
                evict = self.choose_evictions(min(new + spare, self.capacity), clean_through, touched)
            if evict is None:
                evict = self.choose_evictions(new, clean_through, touched)
        return None if evict is None else (budget, evict)

    def evict(self, extents: list[int]) -> None:
        if self._s3 is not None:
            for extent in extents:
                if extent in self._generation_of:
                    self._s3.evicted(extent)
        self.remove(extents)
        self.evicted_total += len(extents)

    def statistics(self) -> RecordStatistics:
        s3 = self._s3
        return RecordStatistics(len(self._generation_of), self.capacity, self.reserved,
                                len(self._generations), self.evicted_total,
                                s3.ghosts() if s3 else 0, s3.ghost_hits if s3 else 0)
