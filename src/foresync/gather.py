"""Gathering a large payload from the chunks a socket hands over (pure; no I/O).

The NBD transmission core and the link frame decoder both receive large payloads (up to 32 MiB)
in chunks. Appending every chunk to the parse buffer and slicing the payload out of it costs two
or three copies; keeping the chunks and joining them once costs one. But a peer that sends a
payload in tiny pieces must not make us hold an object per piece (a 1 MiB payload in 2-byte
pieces was 22 MiB of ``bytes`` objects): only large whole chunks are kept as they are, and
everything else is copied into a ``bytearray`` at the end of the list, so memory stays about
one copy of the payload however it arrives (two for a moment, while the parts are joined).
"""

from __future__ import annotations

KEEP_WHOLE_MIN_BYTES = 1024  # a chunk this big is kept as it is, without a copy (its object costs <4%)

Parts = list[bytes | bytearray]


def add_part(parts: Parts, data: bytes, take: int) -> None:
    """Add ``data[:take]`` to the payload being gathered in ``parts``."""
    if take == len(data) and take >= KEEP_WHOLE_MIN_BYTES and type(data) is bytes:
        parts.append(data)  # immutable: it cannot change under us
        return
    last = parts[-1] if parts else None
    if type(last) is bytearray:
        last += memoryview(data)[:take]
    else:
        parts.append(bytearray(memoryview(data)[:take]))


def join(parts: Parts) -> bytes:
    return b"".join(parts)
