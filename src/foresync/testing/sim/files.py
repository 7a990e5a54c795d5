"""A site's metadata directory in memory, with the faults of a real one (``journal.durable.Files``).

The simulator runs the real ``RecordJournal`` and ``UndoLog`` over this layer. Every file keeps
what reads see now and what an fsync made durable, plus the operations since (writes and
truncations, in order). A ``crash`` decides per file what survived:

- lost unsynced writes: everything since the last fsync is gone (one crash in three);
- otherwise a prefix of those operations survives, in order, the last write maybe cut short (a
  torn write); the sector the cut ends in may then hold zeros or garbage (its page was not
  written back whole).

While ``full`` holds an RNG, a write lands a random prefix of its bytes and returns the short
count, or raises ENOSPC when nothing fits, as a write to a full filesystem does.

Known limit: directory entries (create, rename, unlink) are durable at once. The journal and the
undo log fsync the directory right after each, so this only hides a missing ``fsync_dir``.
"""

from __future__ import annotations

import errno
import itertools
import random
from dataclasses import dataclass, field

SECTOR = 512
_versions = itertools.count(1)


@dataclass(slots=True)
class SimFile:
    data: bytearray = field(default_factory=bytearray)  # what a read sees now
    durable: bytes = b""  # what the last fsync made durable
    ops: list[tuple[int, bytes | None]] = field(default_factory=list)  # since: write, or truncate (None)
    version: int = field(default_factory=lambda: next(_versions))  # changes with ``durable``


def _apply(image: bytearray, offset: int, data: bytes | None) -> None:
    """One operation on an image: write ``data`` at ``offset``, or (None) truncate there."""
    if len(image) < offset:
        image.extend(bytes(offset - len(image)))
    if data is None:
        del image[offset:]
    else:
        image[offset : offset + len(data)] = data


@dataclass(slots=True)
class _Handle:
    file: SimFile
    position: int
    append: bool


class SimFiles:
    """One site's metadata directory: paths to files, open descriptors, crash and damage."""

    def __init__(self) -> None:
        self.files: dict[str, SimFile] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fd = 3
        self.full: random.Random | None = None
        self.failed_writes = 0
        self.torn_writes = 0  # crashes that kept part of a write
        self.lost_writes = 0  # crashes that kept none of a file's unsynced writes

    # -- Files ----------------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        return bytes(self._file(path).data)

    def exists(self, path: str) -> bool:
        return path in self.files

    def open_append(self, path: str) -> int:
        return self._open(self._file(path), append=True)

    def create(self, path: str, exclusive: bool = False, mode: int = 0o666) -> int:
        file = self.files.get(path)
        if file is not None and exclusive:
            raise FileExistsError(errno.EEXIST, "File exists", path)
        if file is None:
            file = self.files[path] = SimFile()
        elif file.data:
            self._truncate(file, 0)
        return self._open(file, append=False)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        handle = self._handles[fd]
        file = handle.file
        if handle.append:
            handle.position = len(file.data)
        chunk = bytes(data)
        if self.full is not None and chunk:
            self.failed_writes += 1
            chunk = chunk[: self.full.randrange(len(chunk))]
            if not chunk:
                raise OSError(errno.ENOSPC, "No space left on device")
        _apply(file.data, handle.position, chunk)
        file.ops.append((handle.position, chunk))
        handle.position += len(chunk)
        return len(chunk)

    def truncate(self, fd: int, length: int) -> None:
        handle = self._handles[fd]
        self._truncate(handle.file, length)
        handle.position = length

    def size(self, fd: int) -> int:
        return len(self._handles[fd].file.data)

    def fsync(self, fd: int) -> None:
        file = self._handles[fd].file
        if file.ops:
            file.durable = bytes(file.data)
            file.ops = []
            file.version = next(_versions)

    fdatasync = fsync

    def close(self, fd: int) -> None:
        del self._handles[fd]

    def replace(self, src: str, dst: str) -> None:
        self.files[dst] = self.files.pop(self._path(src))

    def unlink(self, path: str) -> None:
        del self.files[self._path(path)]

    def fsync_dir(self, path: str) -> None:
        """Directory entries are durable at once here (see the module notes)."""

    # -- faults ---------------------------------------------------------------------------------

    def durable(self, path: str) -> SimFile | None:
        """The file a restart would find at ``path`` (its ``durable`` bytes), or None."""
        return self.files.get(path)

    def crash(self, rng: random.Random) -> None:
        """Every descriptor closes; each file keeps its durable bytes and maybe more of what
        followed (see the module notes)."""
        self._handles.clear()
        for file in self.files.values():
            if not file.ops:
                continue
            image = bytearray(file.durable)
            if rng.random() < 1 / 3:
                self.lost_writes += 1
            else:
                kept = rng.randrange(len(file.ops) + 1)
                for offset, data in file.ops[:kept]:
                    _apply(image, offset, data)
                if kept < len(file.ops) and file.ops[kept][1]:
                    self._tear(rng, image, *file.ops[kept])
            file.data = image
            file.durable = bytes(image)
            file.ops = []
            file.version = next(_versions)

    def _tear(self, rng: random.Random, image: bytearray, offset: int, data: bytes | None) -> None:
        """Part of one write reached the disk: a prefix, its last sector maybe never written
        back (zeros) or written with garbage."""
        assert data is not None
        cut = rng.randrange(1, len(data) + 1)
        _apply(image, offset, data[:cut])
        self.torn_writes += 1
        end = offset + cut
        start = max(offset, end - 1 - (end - 1) % SECTOR)
        spoil = rng.random()
        if spoil < 0.25:
            image[start:end] = bytes(end - start)
        elif spoil < 0.5:
            image[start:end] = rng.randbytes(end - start)

    def damage(self, rng: random.Random, path: str) -> int | None:
        """Flip one byte of the file on disk (bit rot): its position, or None if it is empty."""
        file = self.files.get(path)
        if file is None or not file.durable:
            return None
        assert not file.ops, "damage only a file at rest (after a crash)"
        position = rng.randrange(len(file.durable))
        image = bytearray(file.durable)
        image[position] ^= rng.randrange(1, 256)
        file.data, file.durable, file.version = image, bytes(image), next(_versions)
        return position

    # -- helpers --------------------------------------------------------------------------------

    def _file(self, path: str) -> SimFile:
        return self.files[self._path(path)]

    def _path(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return path

    def _open(self, file: SimFile, append: bool) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._handles[fd] = _Handle(file, 0 if not append else len(file.data), append)
        return fd

    def _truncate(self, file: SimFile, length: int) -> None:
        _apply(file.data, length, None)
        file.ops.append((length, None))
