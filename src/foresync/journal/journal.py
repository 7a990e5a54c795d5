"""The record journal file: appends, group commit, checkpoints and torn-tail recovery.

Appends go straight to the file (``O_APPEND``) but are not durable until ``sync``; the daemon
calls ``sync`` once for every batch of concurrent appends (group commit). ``_fsync`` is the one
place durability happens, so a test can replace it with one that fails. Opening replays the
journal; a torn tail is copied aside to ``<journal>.torn-<offset>`` and fsynced before the file
is truncated back to its last whole entry, so no bytes are ever destroyed silently. Damage (see
``format``) is not a torn tail: opening raises JournalCorruption and leaves the file untouched,
and the caller decides (the secondary widens, then moves the file aside with ``move_aside``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os

from foresync.errors import JournalCorruption
from foresync.journal import format as fmt
from foresync.journal.format import RecordState, Replay

log = logging.getLogger(__name__)


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: str, label: str) -> str:
    """Rename a metadata file that cannot be trusted to ``<path>.<label>-<n>`` (the first
    free n), durably: its bytes are kept for a post-mortem, never destroyed."""
    for suffix in itertools.count(1):
        aside = f"{path}.{label}-{suffix}"
        if os.path.exists(aside):
            continue
        os.rename(path, aside)
        fsync_dir(aside)
        return aside
    raise AssertionError("unreachable")


class RecordJournal:
    def __init__(self, path: str, fd: int, volume_id: bytes, replayed: Replay) -> None:
        self.path = path
        self._fd = fd
        self.volume_id = volume_id
        self.replayed = replayed
        self.entries_since_checkpoint = replayed.entries
        self.appended = 0  # appends since open; sync(n) makes the first n durable
        self.synced = 0

    @classmethod
    def create(cls, path: str, volume_id: bytes, state: RecordState | None = None) -> RecordJournal:
        """Write a new journal holding ``state`` (empty by default) and open it."""
        cls._write_image(path, volume_id, state or RecordState())
        return cls.open(path)

    @classmethod
    def open(cls, path: str) -> RecordJournal:
        with open(path, "rb") as handle:
            data = handle.read()
        replayed = fmt.replay(data)
        if replayed.damage is not None:
            raise JournalCorruption(f"journal {path}: {replayed.damage}", replayed.valid_end)
        if replayed.torn_reason is not None:
            aside = cls._preserve(path, replayed.valid_end, data[replayed.valid_end :])
            log.warning("journal %s: %s at byte %d; %d bytes preserved in %s and cut from the journal",
                        path, replayed.torn_reason, replayed.valid_end, len(data) - replayed.valid_end, aside)
            with open(path, "r+b") as handle:
                handle.truncate(replayed.valid_end)
                handle.flush()
                os.fsync(handle.fileno())
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return cls(path, fd, replayed.volume_id, replayed)

    @staticmethod
    def _preserve(path: str, offset: int, torn: bytes) -> str:
        """Copy a torn tail aside, durably (bytes and directory entry), under a name no earlier
        tear at the same offset already holds: a second crash must not overwrite the first."""
        for suffix in itertools.count():
            aside = f"{path}.torn-{offset}" + (f".{suffix}" if suffix else "")
            try:
                handle = open(aside, "xb")  # noqa: SIM115 (closed by the with below)
            except FileExistsError:
                continue
            with handle:
                handle.write(torn)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_dir(aside)
            return aside
        raise AssertionError("unreachable")

    @staticmethod
    def _write_image(path: str, volume_id: bytes, state: RecordState) -> None:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(fmt.encode_header(volume_id) + fmt.encode_checkpoint(state))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):  # a partial image only holds space a full disk lacks
                os.unlink(tmp)
            raise
        fsync_dir(path)

    def append(self, entry: bytes) -> int:
        """Append one encoded entry; returns its number for ``sync``. Not durable yet."""
        view = memoryview(entry)
        while view:
            view = view[os.write(self._fd, view) :]
        self.appended += 1
        self.entries_since_checkpoint += 1
        return self.appended

    def sync(self) -> int:
        """Make every append so far durable; returns how many appends that covers."""
        target = self.appended
        if target > self.synced:
            self._fsync()
            self.synced = target
        return target

    def commit(self, target: int) -> None:
        """Make the first ``target`` appends durable. Safe to call from a worker thread while the
        event loop keeps appending: appends after the fdatasync starts are simply not counted."""
        self._fsync()
        self.synced = max(self.synced, target)

    def _fsync(self) -> None:
        os.fdatasync(self._fd)

    def checkpoint(self, state: RecordState) -> None:
        """Replace the journal with one checkpoint of ``state`` (atomic rename). If writing the
        new image fails, the old journal stays in place and open, so appends still land in it."""
        self._write_image(self.path, self.volume_id, state)
        old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.close(old)
        self.entries_since_checkpoint = 1
        self.synced = self.appended

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
