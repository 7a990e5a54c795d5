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
    ow.ObjectListRequest(4, int(ow.ListWhat.UNDER), "b/dir/"),
    ow.ObjectList(4, int(ow.ListWhat.RECORD), (("b/dir/\x00", ""),), more=True),
    ow.ObjectAdded(10, ("b/dir/k", "b/dir/\x00")),
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


def test_a_long_listing_crosses_in_frames_and_comes_back_whole() -> None:
    entries = [(f"b/key-{i:05d}", f"etag{i}") for i in range(1000)]
    frames = list(ow.list_frames(9, int(ow.ListWhat.ALL), entries, frame_bytes=2000))
    assert len(frames) > 5 and all(f.more for f in frames[:-1]) and not frames[-1].more
    assert all(len(encode_frame(f)) < 2000 + 100 for f in frames)
    decoder = FrameDecoder()
    decoder.push(b"".join(encode_frame(f) for f in frames))
    got = []
    while (message := decoder.next_message()) is not None:
        assert isinstance(message, ow.ObjectList)
        got.extend(message.entries)
    assert got == entries


def test_an_empty_listing_is_one_last_frame() -> None:
    assert list(ow.list_frames(1, int(ow.ListWhat.RECORD), [])) == [
        ow.ObjectList(1, int(ow.ListWhat.RECORD), (), False)]
