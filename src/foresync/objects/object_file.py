"""One object (or multipart part) file: its format, writing it and reading it back.

Object (and part) file format, integers big-endian::

    0          data            the object's bytes (size bytes)
    size       JSON            {"key", "size", "etag", "content_type", "metadata", "mtime"}
    size+H     u32 H           the JSON's length
    size+H+4   8 bytes         magic b"FSOBJv1\\n"

The trailer lets a PUT stream its body straight to the file and write the ETag (only known at the
end) last; the data starting at offset 0 lets multipart completion and CopyObject copy whole
ranges with ``copy_file_range``. Reading checks the magic and that size + H + 12 is the file's
length. A body is written to a temporary file (``PendingObject``); the store (store.py) seals it
with ``trailer`` and fsyncs it (``Store._fsync``, the one method a test can break), then renames
it into place. ``OpenObject`` reads one back, never past its data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass

from foresync.errors import StorageError

MAGIC = b"FSOBJv1\n"
TRAILER = struct.Struct(">I8s")
assert TRAILER.size == 12
COPY_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes
    content_type: str
    metadata: dict[str, str]
    mtime: float

    def to_json(self) -> bytes:
        return json.dumps({"key": self.key, "size": self.size, "etag": self.etag,
                           "content_type": self.content_type, "metadata": self.metadata,
                           "mtime": self.mtime}, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_json(raw: bytes) -> ObjectInfo:
        doc = json.loads(raw)
        return ObjectInfo(str(doc["key"]), int(doc["size"]), str(doc["etag"]),
                          str(doc["content_type"]), {str(k): str(v) for k, v in doc["metadata"].items()},
                          float(doc["mtime"]))


class PendingObject:
    """A body being written to a temporary file; ``Store.commit_*`` makes it visible."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"put-{secrets.token_hex(12)}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.md5.update(data)
        write_all(self.fd, data)
        self.size += len(data)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class OpenObject:
    """An object opened for reading: its metadata and a descriptor on its (immutable) file."""

    def __init__(self, fd: int, info: ObjectInfo) -> None:
        self.fd = fd
        self.info = info

    def read(self, offset: int, length: int) -> bytes:
        """Object bytes only: a read is clamped at the object's end, before the trailer."""
        return os.pread(self.fd, max(0, min(length, self.info.size - offset)), offset)

    def close(self) -> None:
        os.close(self.fd)


def trailer(info: ObjectInfo) -> bytes:
    """What follows an object's data in its file: the metadata JSON, its length and the magic."""
    meta = info.to_json()
    return meta + TRAILER.pack(len(meta), MAGIC)


def read_trailer(path: str) -> ObjectInfo:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_trailer_fd(fd, path)
    finally:
        os.close(fd)


def read_trailer_fd(fd: int, path: str) -> ObjectInfo:
    length = os.fstat(fd).st_size
    if length < TRAILER.size:
        raise StorageError(f"{path}: shorter than an object trailer")
    meta_len, magic = TRAILER.unpack(os.pread(fd, TRAILER.size, length - TRAILER.size))
    if magic != MAGIC or meta_len > length - TRAILER.size:
        raise StorageError(f"{path}: no object trailer (magic {magic!r})")
    start = length - TRAILER.size - meta_len
    try:
        info = ObjectInfo.from_json(os.pread(fd, meta_len, start))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{path}: object metadata is not valid: {exc}") from None
    if info.size != start:
        raise StorageError(f"{path}: metadata says {info.size} bytes, the file holds {start}")
    return info


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` to ``dst``'s current position, in the
    kernel where it can (copy_file_range), by reading and writing where it cannot."""
    done = 0
    while done < length:
        want = min(COPY_CHUNK_BYTES, length - done)
        try:
            moved = os.copy_file_range(src, dst, want, offset + done)
        except OSError:
            moved = 0
        if moved <= 0:
            data = os.pread(src, want, offset + done)
            if not data:
                raise StorageError(f"source ended {length - done} bytes early")
            write_all(dst, data)
            moved = len(data)
        done += moved


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
