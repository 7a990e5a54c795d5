"""Unit tests for ``foresync.nbd.wire``: constants and layouts against proto.md's literal values.

The other NBD tests build their bytes by hand from the spec; this file pins the module's own
constants to the same numbers, so a typo here cannot hide behind a matching typo in the code.
"""

from __future__ import annotations

import errno
import struct

import pytest

from foresync.nbd import wire
from foresync.nbd.wire import (
    ChunkType,
    Command,
    CommandFlag,
    Errno,
    Info,
    Option,
    Reply,
    TransmissionFlag,
)


def test_magics_spell_what_the_spec_says() -> None:
    assert wire.NBDMAGIC.to_bytes(8, "big") == b"NBDMAGIC"
    assert wire.IHAVEOPT.to_bytes(8, "big") == b"IHAVEOPT"
    assert wire.OPTION_REPLY_MAGIC == 0x0003E889045565A9
    assert wire.REQUEST_MAGIC == 0x25609513
    assert wire.SIMPLE_REPLY_MAGIC == 0x67446698
    assert wire.STRUCTURED_REPLY_MAGIC == 0x668E33EF


@pytest.mark.parametrize(
    ("layout", "size"),
    [
        (wire.GREETING, 18),
        (wire.CLIENT_FLAGS, 4),
        (wire.OPTION_HEADER, 16),
        (wire.OPTION_REPLY_HEADER, 20),
        (wire.REQUEST_HEADER, 28),
        (wire.SIMPLE_REPLY, 16),
        (wire.CHUNK_HEADER, 20),
        (wire.EXPORT_NAME_REPLY, 10),
        (wire.INFO_EXPORT, 12),
        (wire.INFO_BLOCK_SIZE, 14),
        (wire.BLOCK_DESCRIPTOR, 8),
        (wire.CHUNK_ERROR, 6),
    ],
)
def test_layout_sizes(layout: struct.Struct, size: int) -> None:
    assert layout.size == size


def test_request_header_fields_sit_at_their_spec_offsets() -> None:
    raw = wire.REQUEST_HEADER.pack(
        0x25609513, 0x0102, 0x0304, 0x05060708090A0B0C, 0x0D0E0F1011121314, 0x15161718
    )
    assert raw == bytes.fromhex("256095130102030405060708090a0b0c0d0e0f101112131415161718")


def test_export_name_padding_is_124_zero_bytes() -> None:
    assert bytes(124) == wire.EXPORT_NAME_PADDING


def test_option_numbers() -> None:
    assert [int(o) for o in Option] == list(range(1, 12))
    assert (Option.GO, Option.STRUCTURED_REPLY, Option.EXTENDED_HEADERS) == (7, 8, 11)
    assert (Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT) == (9, 10)


def test_reply_types_and_errors_have_bit_31() -> None:
    assert (Reply.ACK, Reply.SERVER, Reply.INFO, Reply.META_CONTEXT) == (1, 2, 3, 4)
    errors = [r for r in Reply if r >= 1 << 31]
    assert [int(r) - (1 << 31) for r in errors] == list(range(1, 10))
    assert Reply.ERR_UNKNOWN == (1 << 31) + 6
    assert Reply.ERR_TOO_BIG == (1 << 31) + 9


def test_info_commands_and_chunk_types() -> None:
    assert [int(i) for i in Info] == [0, 1, 2, 3]
    assert [int(c) for c in Command] == list(range(8))
    assert (
        ChunkType.NONE,
        ChunkType.OFFSET_DATA,
        ChunkType.OFFSET_HOLE,
        ChunkType.BLOCK_STATUS,
    ) == (0, 1, 2, 5)
    assert (ChunkType.ERROR, ChunkType.ERROR_OFFSET) == (32769, 32770)
    assert wire.CHUNK_FLAG_DONE == 1


def test_flag_bits() -> None:
    assert [int(f) for f in TransmissionFlag] == [1 << n for n in range(12)]
    assert [int(f) for f in CommandFlag] == [1, 2, 4, 8, 16]
    assert wire.KNOWN_COMMAND_FLAGS == 0x1F
    assert (int(wire.HandshakeFlag.FIXED_NEWSTYLE), int(wire.HandshakeFlag.NO_ZEROES)) == (1, 2)
    assert (int(wire.ClientFlag.FIXED_NEWSTYLE), int(wire.ClientFlag.NO_ZEROES)) == (1, 2)
    assert (int(wire.AllocationFlag.HOLE), int(wire.AllocationFlag.ZERO)) == (1, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EPERM", 1),
        ("EIO", 5),
        ("ENOMEM", 12),
        ("EINVAL", 22),
        ("ENOSPC", 28),
        ("EOVERFLOW", 75),
        ("ENOTSUP", 95),
        ("ESHUTDOWN", 108),
    ],
)
def test_nbd_errnos_are_the_spec_values_and_match_linux(name: str, value: int) -> None:
    assert Errno[name] == value
    assert getattr(errno, name) == value


def test_base_allocation_context() -> None:
    assert wire.BASE_ALLOCATION == "base:allocation"
    assert wire.BASE_ALLOCATION_ID != 0  # id 0 is what LIST_META_CONTEXT replies carry
