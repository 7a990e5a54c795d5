"""Objects on one site's disk, with the block path's crash-safety (docs/design.md, "Objects").

An object is visible only when whole: its bytes and metadata go to a temporary file under
``tmp/``, which is fsynced, renamed over the object's name and the directory fsynced before the
PUT is answered. A rename replaces a directory entry atomically, so a reader opens either the old
file or the new one, never a mixture; an open file keeps its bytes even if a newer PUT or a DELETE
replaces its name meanwhile. A crash leaves at most a stray temporary file, never a torn object,
and ``tmp/`` is emptied at start. Metadata (ETag, size, content type, user metadata) sits in the
same file as the data, in a trailer, so it is durable with it and cannot disagree with it.

On-disk layout of DIR (all names fixed here)::

    FORMAT                        "foresync-objects 1\\n"
    lock                          flock()ed by the one process serving DIR
    tmp/                          files being written; never read, emptied at start
    damaged/                      object files whose trailer failed its check, moved aside at start
    buckets/BUCKET/HH/SHA256      one object: SHA256 = hex SHA-256 of the key, HH its first 2 hex
    uploads/UPLOAD_ID/upload.json a multipart upload: bucket, key, content type, user metadata
    uploads/UPLOAD_ID/part-NNNNN  one part, in the object file format

Each object (and part) file holds its data from offset 0, then a trailer of metadata and a magic
(object_file.py, which lays it out byte by byte). Every fsync goes through ``Store._fsync``, the
one method a test can break. How a change waits for the mirror (the gate, the per-upload locks)
is commits.py.

All methods block (they do file I/O): the HTTP adapter calls the slow ones in a worker thread.
Index mutations and renames happen under one lock, so concurrent PUTs of one key leave the index
naming the object that won the last rename.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from foresync.errors import ConfigError, StorageError
from foresync.journal import durable
from foresync.objects.commits import CommitGate, UploadLocks
from foresync.objects.names import check_bucket, check_key, key_file_name
from foresync.objects.object_file import (
    ObjectInfo,
    OpenObject,
    PendingObject,
    copy_range,
    read_trailer,
    read_trailer_fd,
    trailer,
    write_all,
)
from foresync.objects.parts import part_name
from foresync.objects.s3errors import S3Error

log = logging.getLogger(__name__)

FORMAT_LINE = "foresync-objects 1\n"
PART_MIN_BYTES = 5 * 1024 * 1024
PART_NUMBER_MAX = 10000
METADATA_MAX_BYTES = 2048
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(slots=True)
class _Bucket:
    created: float
    keys: list[str] = field(default_factory=list)  # sorted
    objects: dict[str, ObjectInfo] = field(default_factory=dict)


class Store:
    def __init__(self, directory: str, part_min_bytes: int = PART_MIN_BYTES) -> None:
        self.dir = os.path.abspath(directory)
        self.part_min_bytes = part_min_bytes
        self.gate: CommitGate | None = None
        self._lock = threading.Lock()
        self._uploads = UploadLocks()
        self._buckets: dict[str, _Bucket] = {}
        self._lock_fd = -1
        self._open()

    # -- start and stop -------------------------------------------------------------------
    def _open(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        fmt = os.path.join(self.dir, "FORMAT")
        if os.path.exists(fmt):
            with open(fmt) as f:
                if f.read() != FORMAT_LINE:
                    raise ConfigError(f"{self.dir}: FORMAT is not {FORMAT_LINE.strip()!r}")
        elif os.listdir(self.dir):
            raise ConfigError(f"{self.dir}: not empty and not an object store (no FORMAT file)")
        self._lock_fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConfigError(f"{self.dir}: another process serves this object store") from None
        for sub in ("tmp", "buckets", "uploads", "damaged"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        if not os.path.exists(fmt):
            self._write_small(fmt, FORMAT_LINE.encode())
        for name in os.listdir(self._tmp):  # never visible: a crash cut these short
            os.unlink(os.path.join(self._tmp, name))
        self._sync_dir(self.dir)
        self._load()

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def _tmp(self) -> str:
        return os.path.join(self.dir, "tmp")

    def _bucket_dir(self, bucket: str) -> str:
        return os.path.join(self.dir, "buckets", check_bucket(bucket))

    def _object_path(self, bucket: str, key: str) -> str:
        name = key_file_name(check_key(key))
        return os.path.join(self._bucket_dir(bucket), name[:2], name)

    def _load(self) -> None:
        root = os.path.join(self.dir, "buckets")
        for bucket in sorted(os.listdir(root)):
            bdir = os.path.join(root, bucket)
            entry = _Bucket(created=os.stat(bdir).st_mtime)
            for path in _files_under(bdir):
                try:
                    info = read_trailer(path)
                except StorageError as exc:
                    aside = os.path.join(self.dir, "damaged", f"{bucket}-{os.path.basename(path)}")
                    log.warning("object file %s is damaged (%s): moved to %s", path, exc, aside)
                    os.rename(path, aside)
                    continue
                entry.objects[info.key] = info
            entry.keys = sorted(entry.objects)
            self._buckets[bucket] = entry

    # -- durability: the one place that fsyncs --------------------------------------------
    def _fsync(self, fd: int) -> None:
        durable.sync_file(fd)  # journal/durable.py: the one module that calls fsync

    def _sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _write_small(self, path: str, data: bytes) -> None:
        """A small file made durable whole: temporary name, fsync, rename, fsync directory."""
        tmp = f"{path}.tmp-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
            self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        self._sync_dir(os.path.dirname(path))

    def _seal(self, pending: PendingObject, info: ObjectInfo) -> None:
        """Append the trailer and fsync: the file is now whole, though not yet visible."""
        try:
            write_all(pending.fd, trailer(info))
            self._fsync(pending.fd)
        finally:
            os.close(pending.fd)
            pending.fd = -1

    def _publish(self, pending: PendingObject, target: str) -> None:
        """Rename a sealed file into place and make the rename durable."""
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            os.mkdir(directory)
            self._sync_dir(os.path.dirname(directory))
        os.rename(pending.path, target)
        self._sync_dir(directory)

    # -- buckets ----------------------------------------------------------------------------
    def buckets(self) -> list[tuple[str, float]]:
        with self._lock:
            return sorted((name, b.created) for name, b in self._buckets.items())

    def has_bucket(self, bucket: str) -> bool:
        return bucket in self._buckets

    def create_bucket(self, bucket: str) -> None:
        path = self._bucket_dir(bucket)
        with self._gated("bucket-create", bucket), self._lock:
            if bucket in self._buckets:
                raise S3Error("BucketAlreadyOwnedByYou", "you already own this bucket", bucket)
            os.mkdir(path)
            self._sync_dir(os.path.dirname(path))
            self._buckets[bucket] = _Bucket(created=time.time())

    @contextlib.contextmanager
    def _gated(self, kind: str, bucket: str) -> Iterator[None]:
        """A bucket change passes the gate before it is made (the mirror marks the bucket's
        name first) and reports after whether it was made."""
        if self.gate is None:
            yield
            return
        token = self.gate.before(kind, bucket, "", None, None)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.gate.after(token, ok)

    def delete_bucket(self, bucket: str) -> None:
        path = self._bucket_dir(bucket)
        self._need_bucket(bucket)
        with self._gated("bucket-delete", bucket), self._lock:
            entry = self._need_bucket(bucket)
            if entry.keys:
                raise S3Error("BucketNotEmpty", "the bucket you tried to delete is not empty", bucket)
            for sub in os.listdir(path):
                os.rmdir(os.path.join(path, sub))
            os.rmdir(path)
            self._sync_dir(os.path.dirname(path))
            del self._buckets[bucket]

    def _need_bucket(self, bucket: str) -> _Bucket:
        entry = self._buckets.get(bucket)
        if entry is None:
            raise S3Error("NoSuchBucket", "the specified bucket does not exist", bucket)
        return entry

    def sorted_keys(self, bucket: str) -> list[str]:
        """The bucket's keys, sorted (a snapshot the caller may keep)."""
        with self._lock:
            return list(self._need_bucket(bucket).keys)

    def keys_under(self, bucket: str, prefix: str, limit: int | None = None) -> list[str]:
        """The bucket's keys starting with ``prefix``, sorted; at most ``limit`` + 1 of them (so
        a caller can tell "more than ``limit``") without walking the rest. None: every one."""
        with self._lock:
            entry = self._buckets.get(bucket)
            if entry is None:
                return []
            found: list[str] = []
            keys = entry.keys
            at = bisect.bisect_left(keys, prefix)
            while (at < len(keys) and keys[at].startswith(prefix)
                   and (limit is None or len(found) <= limit)):
                found.append(keys[at])
                at += 1
            return found

    def info(self, bucket: str, key: str) -> ObjectInfo | None:
        return self._need_bucket(bucket).objects.get(key)

    # -- objects ----------------------------------------------------------------------------
    def begin(self) -> PendingObject:
        return PendingObject(self._tmp)

    def commit_object(self, pending: PendingObject, bucket: str, key: str, content_type: str,
                      metadata: dict[str, str], etag: str | None = None,
                      completion: dict[str, Any] | None = None) -> ObjectInfo:
        """Make a written body the object ``bucket/key``: durable and visible, or an error and
        nothing changed. ``etag`` overrides the MD5 (multipart, copies)."""
        try:
            target = self._object_path(bucket, key)
            _check_metadata(metadata)
            self._need_bucket(bucket)
            info = ObjectInfo(key, pending.size, etag or pending.md5.hexdigest(), content_type,
                              dict(metadata), time.time())
            self._seal(pending, info)
            token = (self.gate.before("complete" if completion else "put", bucket, key, pending,
                                      info, completion) if self.gate else None)
            try:
                with self._lock:
                    self._need_bucket(bucket)
                    self._publish(pending, target)
                    self._index(bucket, info)
            except BaseException:
                if self.gate is not None:
                    self.gate.after(token, False)
                raise
            if self.gate is not None:
                self.gate.after(token, True)
            return info
        except BaseException:
            pending.abort()
            raise

    def _index(self, bucket: str, info: ObjectInfo) -> None:
        entry = self._buckets[bucket]
        if info.key not in entry.objects:
            bisect.insort(entry.keys, info.key)
        entry.objects[info.key] = info

    def open_object(self, bucket: str, key: str) -> OpenObject:
        self._need_bucket(bucket)
        path = self._object_path(bucket, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise S3Error("NoSuchKey", "the specified key does not exist", f"{bucket}/{key}") from None
        try:
            info = read_trailer_fd(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return OpenObject(fd, info)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete if present (S3 answers 204 either way)."""
        path = self._object_path(bucket, key)
        self._need_bucket(bucket)
        token = self.gate.before("delete", bucket, key, None, None) if self.gate else None
        ok = False
        try:
            with self._lock:
                entry = self._need_bucket(bucket)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    ok = True
                    return
                self._sync_dir(os.path.dirname(path))
                if entry.objects.pop(key, None) is not None:
                    del entry.keys[bisect.bisect_left(entry.keys, key)]
                ok = True
        finally:
            if self.gate is not None:
                self.gate.after(token, ok)

    def copy_object(self, src_bucket: str, src_key: str, bucket: str, key: str,
                    replace: tuple[str, dict[str, str]] | None) -> ObjectInfo:
        """CopyObject: the data of ``src`` under a new name, with its metadata or ``replace``'s
        (content type, user metadata). The ETag is the source's: the bytes are the same."""
        source = self.open_object(src_bucket, src_key)
        pending = self.begin()
        try:
            copy_range(source.fd, pending.fd, 0, source.info.size)
            pending.size = source.info.size
        except BaseException:
            pending.abort()
            raise
        finally:
            source.close()
        content_type, metadata = replace or (source.info.content_type, source.info.metadata)
        return self.commit_object(pending, bucket, key, content_type, metadata, etag=source.info.etag)

    # -- multipart ---------------------------------------------------------------------------
    def _upload_dir(self, upload_id: str) -> str:
        if not _UPLOAD_ID_RE.match(upload_id):
            raise S3Error("NoSuchUpload", "the specified upload does not exist")
        return os.path.join(self.dir, "uploads", upload_id)

    def create_upload(self, bucket: str, key: str, content_type: str, metadata: dict[str, str]) -> str:
        check_key(key)
        _check_metadata(metadata)
        self._need_bucket(bucket)
        upload_id = secrets.token_hex(16)
        path = self._upload_dir(upload_id)
        os.mkdir(path)
        self._sync_dir(os.path.dirname(path))
        doc = {"bucket": bucket, "key": key, "content_type": content_type, "metadata": metadata,
               "initiated": time.time()}
        self._write_small(os.path.join(path, "upload.json"), json.dumps(doc).encode("utf-8"))
        return upload_id

    def upload(self, upload_id: str, bucket: str, key: str) -> dict[str, Any]:
        path = os.path.join(self._upload_dir(upload_id), "upload.json")
        try:
            with open(path, "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", "the specified upload does not exist", upload_id) from None
        if doc["bucket"] != bucket or doc["key"] != key:
            raise S3Error("NoSuchUpload", "the upload is for another bucket or key", upload_id)
        return doc

    def commit_part(self, pending: PendingObject, upload_id: str, bucket: str, key: str,
                    number: int) -> ObjectInfo:
        try:
            with self._uploads.shared(upload_id):
                return self._commit_part(pending, upload_id, bucket, key, number)
        except BaseException:
            pending.abort()
            raise

    def _commit_part(self, pending: PendingObject, upload_id: str, bucket: str, key: str,
                     number: int) -> ObjectInfo:
        try:
            if not 1 <= number <= PART_NUMBER_MAX:
                raise S3Error("InvalidArgument", f"partNumber must be 1..{PART_NUMBER_MAX}")
            doc = self.upload(upload_id, bucket, key)
            info = ObjectInfo("", pending.size, pending.md5.hexdigest(), "", {}, time.time())
            self._seal(pending, info)
            detail = {"upload_id": upload_id, "number": number, "upload": doc}
            token = self.gate.before("part", bucket, key, pending, info, detail) if self.gate else None
            ok = False
            try:
                self._publish(pending, os.path.join(self._upload_dir(upload_id), f"part-{number:05d}"))
                ok = True
            finally:
                if self.gate is not None:
                    self.gate.after(token, ok)
            return info
        except BaseException:
            pending.abort()
            raise

    def parts(self, upload_id: str, bucket: str, key: str) -> list[tuple[int, ObjectInfo]]:
        directory = self._upload_dir(upload_id)
        self.upload(upload_id, bucket, key)
        found = []
        for name in sorted(os.listdir(directory)):
            if name.startswith("part-") and "." not in name:
                found.append((int(name[5:]), read_trailer(os.path.join(directory, name))))
        return found

    def complete_upload(self, upload_id: str, bucket: str, key: str,
                        chosen: list[tuple[int, str]]) -> ObjectInfo:
        """Assemble the chosen parts, in order, into the object; then forget the upload."""
        with self._uploads.alone(upload_id):
            return self._complete_upload(upload_id, bucket, key, chosen)

    def _complete_upload(self, upload_id: str, bucket: str, key: str,
                         chosen: list[tuple[int, str]]) -> ObjectInfo:
        doc = self.upload(upload_id, bucket, key)
        have = dict(self.parts(upload_id, bucket, key))
        numbers = [n for n, _ in chosen]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "the parts must be listed in ascending order, once each")
        for i, (number, etag) in enumerate(chosen):
            part = have.get(number)
            if part is None or part.etag != etag:
                raise S3Error("InvalidPart", f"part {number} was not uploaded or its ETag differs")
            if i < len(chosen) - 1 and part.size < self.part_min_bytes:
                raise S3Error("EntityTooSmall", f"part {number} is {part.size} bytes; every part "
                              f"but the last must be at least {self.part_min_bytes}")
        directory = self._upload_dir(upload_id)
        pending = self.begin()
        digests = hashlib.md5()
        try:
            for number, etag in chosen:
                src = os.open(os.path.join(directory, f"part-{number:05d}"), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    copy_range(src, pending.fd, 0, have[number].size)
                finally:
                    os.close(src)
                pending.size += have[number].size
                digests.update(bytes.fromhex(etag))
        except BaseException:
            pending.abort()
            raise
        completion = {"upload_id": upload_id, "parts": [[n, e] for n, e in chosen]}
        info = self.commit_object(pending, bucket, key, doc["content_type"], doc["metadata"],
                                  etag=f"{digests.hexdigest()}-{len(chosen)}", completion=completion)
        self._drop_upload(upload_id)  # the mirror's COMPLETE drops the secondary's copy itself
        return info

    def abort_upload(self, upload_id: str, bucket: str, key: str) -> None:
        """Forget an upload: its parts one by one, each through the gate (the mirror deletes
        them on the secondary too), then the rest."""
        with self._uploads.alone(upload_id):
            self._abort_upload(upload_id, bucket, key)

    def _abort_upload(self, upload_id: str, bucket: str, key: str) -> None:
        for number, _ in self.parts(upload_id, bucket, key):
            path = os.path.join(self._upload_dir(upload_id), f"part-{number:05d}")
            detail = {"upload_id": upload_id, "number": number}
            token = self.gate.before("part-delete", bucket, key, None, None, detail) if self.gate else None
            ok = False
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                ok = True
            finally:
                if self.gate is not None:
                    self.gate.after(token, ok)
        self._drop_upload(upload_id)

    def _drop_upload(self, upload_id: str) -> None:
        directory = self._upload_dir(upload_id)
        shutil.rmtree(directory, ignore_errors=True)
        self._sync_dir(os.path.dirname(directory))

    # -- a mirror's multipart (the secondary applies what the primary did) ----------------------
    def mirror_part(self, pending: PendingObject, upload_id: str, doc: dict[str, Any], number: int,
                    etag: str) -> None:
        """Part ``number`` of ``upload_id`` as the primary has it: the upload is made here from
        its document if it is not yet (with the primary's id), then the part is published."""
        directory = self._upload_dir(upload_id)
        if not os.path.exists(os.path.join(directory, "upload.json")):
            os.makedirs(directory, exist_ok=True)
            self._sync_dir(os.path.dirname(directory))
            self._write_small(os.path.join(directory, "upload.json"), json.dumps(doc).encode("utf-8"))
        if pending.md5.hexdigest() != etag:
            pending.abort()
            raise StorageError(f"part {number} of upload {upload_id}: ETag {pending.md5.hexdigest()}"
                               f" arrived, {etag} expected")
        self._commit_part(pending, upload_id, doc["bucket"], doc["key"], number)

    def mirror_part_delete(self, upload_id: str, number: int) -> None:
        """Part ``number`` of ``upload_id`` is gone on the primary; the upload too once no part
        is left here."""
        directory = self._upload_dir(upload_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, f"part-{number:05d}"))
            self._sync_dir(directory)
        if os.path.isdir(directory) and not any(n.startswith("part-") for n in os.listdir(directory)):
            self._drop_upload(upload_id)

    def open_part(self, upload_id: str, number: int) -> OpenObject | None:
        """Part ``number`` of ``upload_id`` opened for reading, or None if there is none."""
        path = os.path.join(self._upload_dir(upload_id), f"part-{number:05d}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return OpenObject(fd, read_trailer_fd(fd, path))
        except BaseException:
            os.close(fd)
            raise

    def part_listing(self) -> dict[str, str]:
        """Every part of every upload in progress, by its record name (objects/parts.py), with
        its ETag: what a full compare of two sites holds beside the objects."""
        found = {}
        root = os.path.join(self.dir, "uploads")
        for upload_id in sorted(os.listdir(root)):
            doc = self.upload_document(upload_id)
            if doc is None:
                continue
            with contextlib.suppress(FileNotFoundError, S3Error):
                for number, info in self.parts(upload_id, doc["bucket"], doc["key"]):
                    found[part_name(doc["bucket"], upload_id, number)] = info.etag
        return found

    def upload_document(self, upload_id: str) -> dict[str, Any] | None:
        """An upload's document (bucket, key, content type, metadata), or None if none."""
        try:
            with open(os.path.join(self._upload_dir(upload_id), "upload.json"), "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
        except (FileNotFoundError, S3Error):
            return None
        return doc


def _check_metadata(metadata: dict[str, str]) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > METADATA_MAX_BYTES:
        raise S3Error("MetadataTooLarge", f"user metadata is {size} bytes, at most {METADATA_MAX_BYTES}")


def _files_under(directory: str) -> Iterator[str]:
    for sub in sorted(os.listdir(directory)):
        subdir = os.path.join(directory, sub)
        for name in sorted(os.listdir(subdir)):
            yield os.path.join(subdir, name)


