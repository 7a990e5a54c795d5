"""The workload trace format: every NBD request a server took, in a compact binary file.

A trace lets ``foresync tune`` replay a real application's writes through the record code
offline, and lets anyone share a workload without its data (no payload is stored).

Layout (all integers little-endian). A file is one header followed by records until the end::

    header, 24 bytes
      0   8  magic        b"FSTRACE\\x00"
      8   2  version      u16, 1
     10   2  record_size  u16, 24 (a reader skips bytes past the fields it knows)
     12   4  reserved     u32, 0
     16   8  volume_size  u64, the export's size in bytes

    record, 24 bytes, in the order the server received the requests
      0   8  time_ns      u64, nanoseconds since the trace started (monotonic clock)
      8   8  offset       u64, byte offset of the request
     16   4  length       u32, byte length (0 for FLUSH)
     20   1  command      u8, the NBD command: 0 READ, 1 WRITE, 3 FLUSH, 4 TRIM, 5 CACHE,
                          6 WRITE_ZEROES, 7 BLOCK_STATUS (NBD spec, "Request types")
     21   1  flags        u8, the NBD command flags' low byte: 1 FUA, 2 NO_HOLE, 4 DF, 8 REQ_ONE,
                          16 FAST_ZERO
     22   2  reserved     u16, 0

A trace is written uncompressed while it is captured; the suite in bench/workloads keeps them
xz-compressed (``.fstrace.xz``, about 5% of the raw size), and ``decode`` reads either form
after the caller decompresses. A torn last record (the server was killed mid-write) is ignored.
This module is pure: it turns bytes into records and back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from foresync.errors import ForesyncError

MAGIC = b"FSTRACE\x00"
VERSION = 1
HEADER = struct.Struct("<8sHHIQ")
RECORD = struct.Struct("<QQIBBH")
assert HEADER.size == 24 and RECORD.size == 24

READ, WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = 0, 1, 3, 4, 5, 6, 7
FUA = 1


class TraceError(ForesyncError):
    """A file that is not a foresync trace, or of a version this code does not know."""


@dataclass(frozen=True, slots=True)
class TraceRecord:
    time_ns: int
    offset: int
    length: int
    command: int
    flags: int

    @property
    def writes(self) -> bool:
        """Whether the request changes the volume (and so goes through the record)."""
        return self.command in (WRITE, TRIM, WRITE_ZEROES)


def encode_header(volume_size: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, RECORD.size, 0, volume_size)


def encode(record: TraceRecord) -> bytes:
    return RECORD.pack(record.time_ns, record.offset, record.length, record.command,
                       record.flags & 0xFF, 0)


def decode_header(data: bytes, name: str) -> tuple[int, int]:
    """(volume size, record size) of a trace's bytes; ``name`` is for the error message."""
    if len(data) < HEADER.size:
        raise TraceError(f"{name}: too short to be a foresync trace")
    magic, version, record_size, _, volume_size = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TraceError(f"{name}: not a foresync trace (bad magic)")
    if version != VERSION or record_size < RECORD.size:
        raise TraceError(f"{name}: trace version {version} (record size {record_size}) is not known")
    return volume_size, record_size


def decode(data: bytes, name: str = "trace") -> tuple[int, Iterator[TraceRecord]]:
    """The volume size and the records of a whole (uncompressed) trace."""
    volume_size, record_size = decode_header(data, name)

    def records() -> Iterator[TraceRecord]:
        end = len(data) - (len(data) - HEADER.size) % record_size  # drop a torn tail
        for at in range(HEADER.size, end, record_size):
            time_ns, offset, length, command, flags, _ = RECORD.unpack_from(data, at)
            yield TraceRecord(time_ns, offset, length, command, flags)

    return volume_size, records()
