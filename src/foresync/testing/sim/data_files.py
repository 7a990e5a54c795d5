"""Data files swapped or replaced under a secondary's metadata, under the seeded simulator: the
real comparison (replication/data_identity.py) at every start of a daemon of two or three volumes.

**Model.** Each volume's primary holds its content (extent -> version). The secondary site holds
data files (an identity and a content each) and, per volume, metadata: the recorded identity, the
configured file, and the extents that may differ (the record). While the secondary is stopped
the primary keeps writing (those extents join the record). It restarts with, drawn at random:
nothing changed, two volumes' ``data`` lines swapped, or a volume's file replaced by an old copy
(same path, a new inode). A start compares the recorded identity with the file found: a
difference refuses the volume, and the operator starts it with ``--assume-all-out-of-sync`` (a
full compare; the new identity recorded). Otherwise only the record's extents are resynced.

**Invariant** (after every start): a volume reported in sync holds its primary's content.

The deliberate bug ``data_identity_ignored`` (faults.py) must trip it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from foresync.faults import NO_FAULTS, Faults
from foresync.replication.data_identity import DataIdentity, mismatch

EXTENTS = 8
SIZE = EXTENTS << 20


class DataFileFailure(Exception):
    def __init__(self, message: str, schedule: list[str]) -> None:
        super().__init__(message)
        self.schedule = schedule


@dataclass
class _File:
    identity: DataIdentity
    content: dict[int, int]


@dataclass
class _Volume:
    name: str
    primary: dict[int, int] = field(default_factory=dict)  # extent -> version
    data: str = ""  # the configured path of its data file on the secondary
    recorded: DataIdentity | None = None
    record: set[int] = field(default_factory=set)  # extents that may differ
    in_sync: bool = True


class DataFileWorld:
    def __init__(self, seed: int, faults: Faults = NO_FAULTS, rounds: int = 12) -> None:
        self.rng = random.Random(seed ^ 0xDA7A1D)
        self.faults = faults
        self.rounds = rounds
        self.schedule: list[str] = []
        self.next_ino = 100
        self.files: dict[str, _File] = {}
        self.volumes = [_Volume(f"v{i}") for i in range(self.rng.randint(2, 3))]
        for volume in self.volumes:
            volume.data = f"/srv/{volume.name}.img"
            self.files[volume.data] = _File(self._identity(volume.data), {})
            volume.recorded = self.files[volume.data].identity  # foresync init
        self.full_compares = 0

    def _identity(self, path: str) -> DataIdentity:
        self.next_ino += 1
        return DataIdentity(path, 2049, self.next_ino, 0, SIZE)

    def _write(self, volume: _Volume, connected: bool) -> None:
        extent = self.rng.randrange(EXTENTS)
        volume.primary[extent] = volume.primary.get(extent, 0) + 1
        if connected:
            self.files[volume.data].content[extent] = volume.primary[extent]
        else:
            volume.record.add(extent)
            volume.in_sync = False

    def _tamper(self) -> None:
        draw = self.rng.random()
        if draw < 0.3:
            a, b = self.rng.sample(self.volumes, 2)
            a.data, b.data = b.data, a.data
            self.schedule.append(f"data lines of {a.name} and {b.name} swapped")
        elif draw < 0.6:
            volume = self.rng.choice(self.volumes)
            old = self.files[volume.data]
            stale = {e: v - 1 for e, v in old.content.items() if v > 1}  # an older backup
            self.files[volume.data] = _File(self._identity(volume.data), stale)
            self.schedule.append(f"{volume.name}: data restored from an old copy")

    def _start(self, volume: _Volume) -> None:
        file = self.files[volume.data]
        assert volume.recorded is not None
        why = mismatch(volume.recorded, file.identity, self.faults)
        if why:  # refused; the operator starts it with --assume-all-out-of-sync
            self.schedule.append(f"{volume.name}: refused ({why}); full compare")
            volume.record = set(range(EXTENTS))
            volume.recorded = file.identity
            self.full_compares += 1
        for extent in sorted(volume.record):
            if extent in volume.primary:
                file.content[extent] = volume.primary[extent]
            else:
                file.content.pop(extent, None)
        volume.record.clear()
        volume.in_sync = True

    def _check(self) -> None:
        for volume in self.volumes:
            if volume.in_sync and self.files[volume.data].content != volume.primary:
                raise DataFileFailure(f"invariant: {volume.name} reported in sync while its data "
                                      "differs from the primary's", self.schedule)

    def run(self) -> None:
        for _ in range(self.rounds):
            for _ in range(self.rng.randint(1, 4)):
                self._write(self.rng.choice(self.volumes), connected=True)
            self.schedule.append("secondary stopped")
            for _ in range(self.rng.randint(1, 3)):
                self._write(self.rng.choice(self.volumes), connected=False)
            self._tamper()
            for volume in self.volumes:
                self._start(volume)
            self._check()
