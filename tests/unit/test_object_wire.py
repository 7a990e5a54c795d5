"""The link's object frames (link/object_wire.py): round trips through the frame decoder, whole
and a byte at a time, and malformed payloads refused."""

from __future__ import annotations

import pytest

from foresync.errors import RemoteProtocolError
from foresync.link import object_wire as ow
from foresync.link.wire import FrameDecoder, encode_frame

MESSAGES = [
    ow.ObjectOp(7, int(ow.ObjectKind.PUT), int(ow.ObjectFlag.MISS), 8, "b/ключ", ("b/x", "b/y"),
                b'{"etag": "e"}', b"\0data" * 10),
    ow.ObjectOp(8, int(ow.ObjectKind.DELETE), 0, 0, "b/k"),
    ow.ObjectChunk(9, 8 << 20, b"piece"),
    ow.ObjectAdded(7, ("b/k", "b/k2")),
    ow.ObjectDurable(9),
    ow.ObjectRemove(("b/a",)),
    ow.ObjectListRequest(3, int(ow.ListWhat.ALL)),
    ow.ObjectList(3, int(ow.ListWhat.ALL), (("b/a", "etag"), ("b/c", ""))),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip_whole_and_byte_by_byte(message: ow.ObjectMessage) -> None:
    frame = encode_frame(message)
    decoder = FrameDecoder()
    decoder.push(frame + encode_frame(message))
    assert decoder.next_message() == message and decoder.next_message() == message
    slow = FrameDecoder()
    for i in range(len(frame)):
        assert slow.next_message() is None
        slow.push(frame[i:i + 1])
    assert slow.next_message() == message


@pytest.mark.parametrize("kind,payload", [
    (ow.OBJ_OP, b"\0" * 15),  # shorter than the fixed part
    (ow.OBJ_ADDED, b"\0" * 8 + b"\0\0\0\5"),  # five names promised, none there
    (ow.OBJ_DURABLE, b"\0" * 9),  # a trailing byte
    (ow.OBJ_LIST, b"\0" * 9 + b"\xff\xff\xff\xff"),
    (ow.OBJ_REMOVE, b"\0\0\0\1\0\2\xff\xfe"),  # not UTF-8
])
def test_malformed_payloads_are_refused(kind: int, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        ow.decode(kind, payload)
