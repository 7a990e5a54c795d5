"""The record journal file: appends, group commit, checkpoints and torn-tail recovery.

Appends go straight to the file (``O_APPEND``) but are not durable until ``sync``; the daemon
calls ``sync`` once for every batch of concurrent appends (group commit). ``_fsync`` is the one
place durability happens, so a test can replace it with one that fails. An append the file
refuses (a full disk) is cut back to the last whole entry and kept in memory with every later
one; ``commit`` writes them before it syncs, and fails while it cannot. Every entry since the
last successful sync is kept too: after a failed fdatasync the kernel may have dropped those
pages, so the file is cut back to what that sync covered and they are written again. So the
file only ever holds whole entries, in order, and a commit covers every append before it.

Overlapping commits. A second ``commit`` may start (in another thread) while one is in flight: it
covers every append made before it started, and an fdatasync of the file covers every byte
written before the call. But Linux reports a writeback error to only one of the fdatasyncs that
overlap on a file description, so one of two overlapping calls may return success although pages
written before it started were dropped. So overlapping commits form a *cluster*, settled together
once none of them is in flight: if all succeeded, everything appended before the latest start is
durable, and each returns; if any failed, each raises (and the file is cut back as above). A
commit therefore returns only when every commit that overlapped it has returned too. Opening replays the
journal; a torn tail is copied aside to ``<journal>.torn-<offset>`` and fsynced before the file
is truncated back to its last whole entry, so no bytes are ever destroyed silently. Damage (see
``format``) is not a torn tail: opening raises JournalCorruption and leaves the file untouched,
and the caller decides (the secondary widens, then moves the file aside with ``durable.move_aside``).

Every file operation goes through a ``journal.durable.Files``: the real filesystem by default,
the seeded simulator's faulty one (``testing/sim/files.py``) there, so both run this code.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading

from foresync.errors import JournalCorruption, StorageError, invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import format as fmt
from foresync.journal.durable import OS_FILES, Files, write_all
from foresync.journal.format import RecordState, Replay

log = logging.getLogger(__name__)



class RecordJournal:
    def __init__(self, path: str, fd: int, volume_id: bytes, replayed: Replay,
                 files: Files = OS_FILES, faults: Faults = NO_FAULTS) -> None:
        self.path = path
        self._files = files
        self._faults = faults
        self._fd = fd
        self.volume_id = volume_id
        self.replayed = replayed
        self.entries_since_checkpoint = replayed.entries
        self.appended = 0  # appends since open; sync(n) makes the first n durable
        self.synced = 0
        # commit() runs in a worker thread while the event loop appends: the lock guards the
        # file's end and the entries below (never held across commit's fdatasync).
        self._lock = threading.Lock()
        self._end = files.size(fd)  # the file's length: whole entries only
        self._synced_end = self._end
        self._since_sync: list[bytes] = []  # entries appended since the last successful sync
        self._unwritten = 0  # how many of the last of those are not in the file yet
        self._cut = False  # the file may hold bytes past _end (a failed write, a failed sync)
        # Overlapping commits (see above): those in flight, the cluster they belong to, whether
        # one of its fdatasyncs failed, and the (appends, file end) the latest start covers.
        self._settled = threading.Condition(self._lock)
        self._in_flight = 0
        self._cluster = 0
        self._cluster_failed: set[int] = set()  # recent clusters that failed (pruned)
        self._pending: tuple[int, int] = (0, self._end)
        self._durable_count = 0  # appends durable (since open): _since_sync follows them
        self.commits_overlapped = 0  # commits that started while another was in flight

    @classmethod
    def create(cls, path: str, volume_id: bytes, state: RecordState | None = None,
               files: Files = OS_FILES, faults: Faults = NO_FAULTS) -> RecordJournal:
        """Write a new journal holding ``state`` (empty by default) and open it."""
        cls._write_image(files, path, volume_id, state or RecordState())
        return cls.open(path, files, faults)

    @classmethod
    def open(cls, path: str, files: Files = OS_FILES, faults: Faults = NO_FAULTS) -> RecordJournal:
        data = files.read(path)
        replayed = fmt.replay(data, faults=faults)
        if replayed.damage is not None:
            raise JournalCorruption(f"journal {path}: {replayed.damage}", replayed.valid_end)
        fd = files.open_append(path)
        if replayed.torn_reason is not None:
            try:
                aside = cls._preserve(files, path, replayed.valid_end, data[replayed.valid_end :])
                log.warning("journal %s: %s at byte %d; %d bytes preserved in %s and cut from the "
                            "journal", path, replayed.torn_reason, replayed.valid_end,
                            len(data) - replayed.valid_end, aside)
                files.truncate(fd, replayed.valid_end)
                files.fsync(fd)
            except BaseException:
                files.close(fd)
                raise
        return cls(path, fd, replayed.volume_id, replayed, files, faults)

    @staticmethod
    def _preserve(files: Files, path: str, offset: int, torn: bytes) -> str:
        """Copy a torn tail aside, durably (bytes and directory entry), under a name no earlier
        tear at the same offset already holds: a second crash must not overwrite the first."""
        for suffix in itertools.count():
            aside = f"{path}.torn-{offset}" + (f".{suffix}" if suffix else "")
            try:
                fd = files.create(aside, exclusive=True)
            except FileExistsError:
                continue
            try:
                write_all(files, fd, torn)
                files.fsync(fd)
            finally:
                files.close(fd)
            files.fsync_dir(aside)
            return aside
        raise AssertionError("unreachable")

    @staticmethod
    def _write_image(files: Files, path: str, volume_id: bytes, state: RecordState) -> None:
        tmp = f"{path}.tmp"
        try:
            fd = files.create(tmp)
            try:
                write_all(files, fd, fmt.encode_header(volume_id) + fmt.encode_checkpoint(state))
                files.fsync(fd)
            finally:
                files.close(fd)
            files.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):  # a partial image only holds space a full disk lacks
                files.unlink(tmp)
            raise
        files.fsync_dir(path)

    def append(self, entry: bytes) -> int:
        """Append one encoded entry; returns its number for ``sync``. Not durable yet. Never
        fails for want of room: the entry then waits in memory for ``commit``."""
        with self._lock:
            self._since_sync.append(entry)
            self.appended += 1
            self.entries_since_checkpoint += 1
            if not self._unwritten:
                try:
                    self._write(entry)
                except OSError:
                    self._unwritten = 1  # commit reports it, if there is still no room then
            else:
                self._unwritten += 1
            return self.appended

    def _write(self, entry: bytes) -> None:
        """Write one whole entry at the end (under the lock), or leave the file as it was."""
        if self._cut:
            self._files.truncate(self._fd, self._end)
            self._cut = False
        view = memoryview(entry)
        try:
            while view:
                view = view[self._files.write(self._fd, view) :]
        except OSError:
            self._cut = len(view) < len(entry)  # part of it landed: cut it off first next time
            raise
        self._end += len(entry)

    def sync(self) -> int:
        """Make every append so far durable; returns how many appends that covers."""
        target = self.appended
        if target > self.synced:
            self.commit(target)
        return target

    def commit(self, target: int) -> None:
        """Make the first ``target`` appends durable, or raise StorageError. Safe to call from a
        worker thread while the event loop keeps appending (appends after the fdatasync starts
        are not counted), and beside another commit in flight (see above: it returns when the
        cluster of overlapping commits settles)."""
        with self._lock:
            try:
                while self._unwritten:
                    self._write(self._since_sync[-self._unwritten])
                    self._unwritten -= 1
            except OSError as exc:
                raise StorageError.from_os(f"journal {self.path}: append failed", exc) from exc
            covered, end = self._durable_count + len(self._since_sync), self._end
            if self._in_flight:
                self.commits_overlapped += 1
            self._in_flight += 1
            cluster = self._cluster
        failure: OSError | None = None
        try:
            self._fsync()
        except OSError as exc:
            failure = exc
        with self._lock:
            self._in_flight -= 1
            if failure is not None:
                self._cluster_failed.add(cluster)
                # write them all again: the kernel may have dropped those pages
                self._end, self._cut = self._synced_end, True
                self._unwritten = len(self._since_sync)
            elif cluster not in self._cluster_failed:
                self._pending = max(self._pending, (covered, end))
            if self._in_flight == 0:
                self._settle_cluster()
            else:
                while self._cluster == cluster:
                    self._settled.wait()
            failed = cluster in self._cluster_failed
        if failure is not None:
            raise StorageError.from_os(f"journal {self.path}: fdatasync failed", failure) from failure
        if failed:
            raise StorageError(f"journal {self.path}: an fdatasync overlapping this commit failed, "
                               "so its success does not prove the entries durable")
        self.synced = max(self.synced, target)

    def _settle_cluster(self) -> None:
        """The last commit of a cluster returned (under the lock): settle it, wake the others."""
        cluster = self._cluster
        if cluster not in self._cluster_failed:
            covered, end = self._pending
            if covered > self._durable_count:
                del self._since_sync[: covered - self._durable_count]
                self._durable_count = covered
                self._synced_end = end
        self._pending = (self._durable_count, self._synced_end)
        self._cluster_failed = {c for c in self._cluster_failed if c > cluster - 8}
        self._cluster += 1
        self._settled.notify_all()

    def _fsync(self) -> None:
        if self._faults.journal_sync_skipped:
            return  # deliberately wrong: see faults.py
        self._files.fdatasync(self._fd)

    def checkpoint(self, state: RecordState) -> None:
        """Replace the journal with one checkpoint of ``state`` (atomic rename). If writing the
        new image fails, the old journal stays in place and open, so appends still land in it."""
        with self._lock:
            invariant(self._in_flight == 0, "journal checkpoint while a commit is in flight")
            self._write_image(self._files, self.path, self.volume_id, state)
            old, self._fd = self._fd, self._files.open_append(self.path)
            self._files.close(old)
            self.entries_since_checkpoint = 1
            self.synced = self.appended
            self._end = self._synced_end = self._files.size(self._fd)
            self._since_sync, self._unwritten, self._cut = [], 0, False
            self._durable_count = self.appended
            self._pending = (self._durable_count, self._synced_end)

    def close(self) -> None:
        if self._fd >= 0:
            self._files.close(self._fd)
            self._fd = -1
