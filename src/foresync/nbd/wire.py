"""NBD wire constants and fixed layouts (NetworkBlockDevice/nbd ``doc/proto.md``).

All integers are big-endian ("network byte order"). Layouts, byte by byte:

Handshake, server greeting (18 bytes, "Newstyle negotiation"):
    0   u64  NBDMAGIC  = 0x4e42444d41474943 ("NBDMAGIC")
    8   u64  IHAVEOPT  = 0x49484156454f5054 ("IHAVEOPT")
    16  u16  handshake flags (FIXED_NEWSTYLE | NO_ZEROES)
Client flags (4 bytes): u32 (C_FIXED_NEWSTYLE | C_NO_ZEROES)
Option request header (16 bytes):
    0   u64  IHAVEOPT
    8   u32  option
    12  u32  length of option data, which follows
Option reply header (20 bytes):
    0   u64  REPLY_MAGIC = 0x3e889045565a9
    8   u32  option being answered
    12  u32  reply type (ACK, SERVER, INFO, META_CONTEXT, or an error with bit 31 set)
    16  u32  length of reply data, which follows
Transmission request header (28 bytes):
    0   u32  REQUEST_MAGIC = 0x25609513
    4   u16  command flags
    6   u16  command type
    8   u64  cookie ("handle"), echoed in the reply
    16  u64  offset
    24  u32  length (unsigned; WRITE data of that length follows)
Simple reply header (16 bytes):
    0   u32  SIMPLE_REPLY_MAGIC = 0x67446698
    4   u32  error (0 or an NBD errno)
    8   u64  cookie
Structured reply chunk header (20 bytes, "Structured replies"):
    0   u32  STRUCTURED_REPLY_MAGIC = 0x668e33ef
    4   u16  flags (DONE = 1)
    6   u16  chunk type
    8   u64  cookie
    16  u32  length of chunk payload, which follows
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

from foresync.errors import Errno as Errno  # re-exported: NBD answers carry it
from foresync.errors import invariant
from foresync.geometry import AllocationFlag as AllocationFlag  # re-exported

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

GREETING = struct.Struct(">QQH")
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")
OPTION_REPLY_HEADER = struct.Struct(">QIII")
REQUEST_HEADER = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")
CHUNK_HEADER = struct.Struct(">IHHQI")
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zero bytes unless NO_ZEROES)
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
INFO_EXPORT = struct.Struct(">HQH")  # info type, size, transmission flags
INFO_BLOCK_SIZE = struct.Struct(">HIII")  # info type, minimum, preferred, maximum
BLOCK_DESCRIPTOR = struct.Struct(">II")  # extent length, status flags
CHUNK_ERROR = struct.Struct(">IH")  # errno, message length (message follows)

# Sizes are part of the protocol; a change here is a wire break, so check them at import.
invariant(GREETING.size == 18 and OPTION_HEADER.size == 16, "handshake layout")
invariant(OPTION_REPLY_HEADER.size == 20 and INFO_EXPORT.size == 12, "option reply layout")
invariant(REQUEST_HEADER.size == 28 and SIMPLE_REPLY.size == 16, "request/reply layout")
invariant(CHUNK_HEADER.size == 20 and BLOCK_DESCRIPTOR.size == 8, "structured reply layout")
invariant(INFO_BLOCK_SIZE.size == 14, "block size info layout")

EXPORT_NAME_PADDING = b"\0" * 124
MAX_STRING_BYTES = 4096  # "MUST be no longer than 4096 bytes" (Conventions)


class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class TransmissionFlag(IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Option(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


_ERR = 1 << 31


class Reply(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = _ERR + 1
    ERR_POLICY = _ERR + 2
    ERR_INVALID = _ERR + 3
    ERR_PLATFORM = _ERR + 4
    ERR_TLS_REQD = _ERR + 5
    ERR_UNKNOWN = _ERR + 6
    ERR_SHUTDOWN = _ERR + 7
    ERR_BLOCK_SIZE_REQD = _ERR + 8
    ERR_TOO_BIG = _ERR + 9


class Info(IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Command(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class CommandFlag(IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


KNOWN_COMMAND_FLAGS = int(
    CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.DF | CommandFlag.REQ_ONE | CommandFlag.FAST_ZERO
)


class ChunkType(IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


CHUNK_FLAG_DONE = 1






BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1  # the context id we hand out for base:allocation
