"""Recording a workload: an ``NbdTarget`` that writes every request to a trace, then passes it on.

The format is in ``trace.py``. Records go through a buffered file (one 24-byte ``write`` into
the buffer per request, an OS write every 256 KiB), so tracing costs the event loop about a
microsecond a request; the file is flushed when the server stops, and every ``FLUSH_EVERY_S``
while it runs so that a killed server leaves a usable trace.
"""

from __future__ import annotations

import logging
import time
from typing import BinaryIO

from foresync.errors import ConfigError
from foresync.geometry import Extent
from foresync.nbd import trace
from foresync.nbd.target import Done, NbdTarget, WriteItems, WriteMany, group_call
from foresync.nbd.wire import CommandFlag

log = logging.getLogger(__name__)

# The trace keeps the NBD flag bits the server decoded into the typed calls (trace.py, "flags").
_FUA, _NO_HOLE, _FAST_ZERO = int(CommandFlag.FUA), int(CommandFlag.NO_HOLE), int(CommandFlag.FAST_ZERO)

BUFFER_BYTES = 256 * 1024
FLUSH_EVERY_S = 5.0


class TraceWriter:
    def __init__(self, path: str, volume_size: int) -> None:
        try:
            self._file: BinaryIO = open(path, "wb", buffering=BUFFER_BYTES)  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise ConfigError(f"cannot write the trace {path}: {exc.strerror}") from None
        self.path = path
        self._file.write(trace.encode_header(volume_size))
        self._start_ns = time.monotonic_ns()
        self._flushed_ns = self._start_ns
        self.records = 0

    def record(self, command: int, flags: int, offset: int, length: int) -> None:
        now = time.monotonic_ns()
        self._file.write(trace.RECORD.pack(now - self._start_ns, offset, length, command, flags & 0xFF, 0))
        self.records += 1
        if now - self._flushed_ns > FLUSH_EVERY_S * 1e9:
            self._flushed_ns = now
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            log.info("trace %s: %d requests", self.path, self.records)


class TracingTarget:
    """Delegates to ``inner``; records each request first, in the order the server took them
    (each write of a group too, as the plain WRITE it was)."""

    def __init__(self, inner: NbdTarget, writer: TraceWriter) -> None:
        self.inner = inner
        self.writer = writer
        self.size = inner.size
        self.read_only = inner.read_only
        self._inner_many = group_call(inner)
        self.write_many: WriteMany | None = None if self._inner_many is None else self._write_many

    def read(self, offset: int, length: int) -> bytes:
        self.writer.record(trace.READ, 0, offset, length)
        return self.inner.read(offset, length)

    def extents(self, offset: int, length: int) -> list[Extent]:
        self.writer.record(trace.BLOCK_STATUS, 0, offset, length)
        return self.inner.extents(offset, length)

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        self.writer.record(trace.WRITE, _FUA if fua else 0, offset, len(data))
        self.inner.write(offset, data, fua, done)

    def _write_many(self, items: WriteItems) -> None:
        assert self._inner_many is not None  # set only then
        record = self.writer.record
        for offset, data, _ in items:
            record(trace.WRITE, 0, offset, len(data))
        self._inner_many(items)

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        flags = (_FUA if fua else 0) | (0 if may_punch else _NO_HOLE) | (_FAST_ZERO if fast_only else 0)
        self.writer.record(trace.WRITE_ZEROES, flags, offset, length)
        self.inner.zero(offset, length, fua, may_punch, fast_only, done)

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        self.writer.record(trace.TRIM, _FUA if fua else 0, offset, length)
        self.inner.trim(offset, length, fua, done)

    def flush(self, done: Done) -> None:
        self.writer.record(trace.FLUSH, 0, 0, 0)
        self.inner.flush(done)

    def cache(self, offset: int, length: int, done: Done) -> None:
        self.writer.record(trace.CACHE, 0, offset, length)
        self.inner.cache(offset, length, done)
