"""The primary's copy of the secondary's record of objects, with what each entry weighs (issue 18).

Theory of operation. The record is bounded in the names it covers and their bytes, because what
it covers is what a failback or a reconnect must copy. An exact entry covers one name: it weighs
1 name and the name's UTF-8 bytes. A prefix entry (objects/entries.py) covers every name under
its directory: it weighs the names the primary holds there when it is taken into the copy (plus
the name being written), at most ``prefix_names_max`` of them, and grows by one name for each
name first written under it while it is recorded (replication/objects.py decides when; a delete
does not shrink it, so the weight only ever errs on the safe side until the next connect weighs
it again). The sums ``names`` and ``bytes`` are what the record's bounds are checked against.

An exact entry under a prefix entry (a name the prefix could not grow to take) is evicted only
with it: evicting it alone would leave its name covered by the prefix entry but counted nowhere.
``groups`` gives, for eviction, each entry that may go on its own and what goes with it.

Each entry keeps the oseq of the last op it covered, for the clean rule (replication/objects.py).
Pure, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from foresync.objects.entries import covering_prefixes, entry_directory, is_prefix_entry


def exact_weight(name: str) -> tuple[int, int]:
    return 1, len(name.encode("utf-8"))


class RecordCopy:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._seqs: OrderedDict[str, int] = OrderedDict()  # entry -> last oseq, oldest use first
        self._weights: dict[str, tuple[int, int]] = {}  # prefix entry -> (names, bytes)
        self._under: dict[str, dict[str, None]] = {}  # directory -> the entries below it
        self.names = 0
        self.bytes = 0
        self.prefixes = 0

    def __contains__(self, entry: object) -> bool:
        return entry in self._seqs

    def __iter__(self) -> Iterator[str]:
        return iter(self._seqs)

    def __len__(self) -> int:
        return len(self._seqs)

    def seq(self, entry: str) -> int:
        return self._seqs[entry]

    def weight(self, entry: str) -> tuple[int, int]:
        return self._weights[entry] if is_prefix_entry(entry) else exact_weight(entry)

    def add(self, entry: str, seq: int, weight: tuple[int, int] | None = None) -> None:
        """Take ``entry`` in (most recently used), weighing ``weight`` if a prefix entry."""
        if entry in self._seqs:
            self.touch(entry, max(seq, self._seqs[entry]))
            return
        if is_prefix_entry(entry):
            assert weight is not None
            self._weights[entry] = weight
            self.prefixes += 1
        names, size = self.weight(entry)
        self.names += names
        self.bytes += size
        self._seqs[entry] = seq
        for directory in _directories_above(entry):
            self._under.setdefault(directory, {})[entry] = None

    def remove(self, entry: str) -> None:
        names, size = self.weight(entry)
        self.names -= names
        self.bytes -= size
        del self._seqs[entry]
        if is_prefix_entry(entry):
            del self._weights[entry]
            self.prefixes -= 1
        for directory in _directories_above(entry):
            below = self._under[directory]
            del below[entry]
            if not below:
                del self._under[directory]

    def touch(self, entry: str, seq: int) -> None:
        """An op covered by ``entry`` was sent as ``seq``: most recently used now."""
        self._seqs[entry] = seq
        self._seqs.move_to_end(entry)

    def set_seq(self, entry: str, seq: int) -> None:
        """A resync op covered by ``entry``: it stays dirty until that op is durable."""
        self._seqs[entry] = seq

    def grow(self, entry: str, names: int, size: int) -> None:
        have_names, have_bytes = self._weights[entry]
        self._weights[entry] = (have_names + names, have_bytes + size)
        self.names += names
        self.bytes += size

    def covering(self, name: str) -> str | None:
        """The entry that covers ``name``: itself, else the deepest prefix entry above it."""
        if name in self._seqs:
            return name
        return self.covering_prefix(name)

    def covering_prefix(self, name: str) -> str | None:
        for entry in covering_prefixes(name):
            if entry in self._seqs and entry != name:
                return entry
        return None

    def under(self, entry: str) -> list[str]:
        """The entries a prefix entry covers (exact or deeper prefix entries)."""
        return list(self._under.get(entry_directory(entry), ()))

    def weight_under(self, directory: str) -> tuple[int, int]:
        names = size = 0
        for entry in self._under.get(directory, ()):
            entry_names, entry_bytes = self.weight(entry)
            names, size = names + entry_names, size + entry_bytes
        return names, size

    def groups(self) -> Iterator[tuple[str, list[str]]]:
        """Each entry that may be evicted on its own (one under no prefix entry here), oldest use
        first, with the entries that must go with it."""
        for entry in list(self._seqs):
            if entry not in self._seqs or self.covering_prefix(entry) is not None:
                continue
            yield entry, (self.under(entry) if is_prefix_entry(entry) else [])


def _directories_above(entry: str) -> list[str]:
    """The directories that hold ``entry`` (not a prefix entry's own directory)."""
    name = entry_directory(entry) if is_prefix_entry(entry) else entry
    end = name.rfind("/", 0, len(name) - 1) if is_prefix_entry(entry) else name.rfind("/")
    found = []
    while end >= 0:
        found.append(name[:end + 1])
        end = name.rfind("/", 0, end)
    return found
