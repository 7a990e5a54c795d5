"""The object adapters (issue 18): the S3 front end and object store of a site, over the link.

``ObjectsPrimary`` serves S3 (``[s3] listen``) on the primary, holds every change the store makes
(``Store.gate``, called in the committing worker thread) until ``ObjectPrimaryCore`` says it may
become visible (``CommitLocal``) and until the client may be answered (``AnswerClient``), and
carries out the core's other actions: object frames to the link (large data in OBJ_CHUNK
pieces), the may-differ names to ``[volume] meta``/objects-may-differ.json, reads for resync.

``ObjectsSecondary`` applies the object frames in stream order, one at a time in a worker thread:
the record change (``ObjectSecondaryCore``) is journalled durably and OBJ_ADDED sent before the
object is written; OBJ_DURABLE follows each op once its file and directory are fsynced
(objects/store.py).

A site's "names that may differ" live in one of two files by role: the record journal
(objects-record.journal) as a secondary, the may-differ file as a primary. Starting in a role
merges the other file in durably before deleting it, so a promoted secondary starts with its
record as what may differ (failback copies those names plus what is written since), and a
demoted primary's unreplicated names become its record, which the new primary then resyncs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from foresync import tls
from foresync.config import SiteConfig, listen_error
from foresync.errors import StorageError
from foresync.journal.object_record import (
    ObjectRecordJournal,
    load_may_differ,
    store_may_differ,
)
from foresync.link import wire
from foresync.link.object_wire import (
    ListWhat,
    ObjectAdded,
    ObjectChunk,
    ObjectDurable,
    ObjectFlag,
    ObjectKind,
    ObjectListRequest,
    ObjectMessage,
    ObjectOp,
    ObjectRemove,
    list_frames,
)
from foresync.objects.object_file import ObjectInfo, PendingObject
from foresync.objects.parts import (
    completion_meta,
    completion_parts,
    parse_completion,
    parse_part_name,
    part_name,
)
from foresync.objects.predict import LinksPredictor
from foresync.objects.s3 import S3Frontend, load_credentials, start_server
from foresync.objects.s3errors import S3Error
from foresync.objects.store import Store
from foresync.replication.objects import (
    AnswerClient,
    CommitLocal,
    ObjectConfig,
    ObjectPrimaryCore,
    ObjectSecondaryCore,
    PersistMayDiffer,
    ReadForResync,
    SendObject,
)

log = logging.getLogger(__name__)

RECORD_FILE = "objects-record.journal"
MAY_DIFFER_FILE = "objects-may-differ.json"
CHUNK_BYTES = 8 * 1024 * 1024  # object data over this goes in OBJ_CHUNK frames
ASK_S = 30.0  # how long a worker thread waits for the core's answer on the loop
DRAIN_S = 10.0  # how long a stopping secondary keeps applying the object frames it received
OBJECT_MESSAGES = ObjectMessage.__args__
_KINDS = {"put": ObjectKind.PUT, "delete": ObjectKind.DELETE,
          "bucket-create": ObjectKind.BUCKET_CREATE, "bucket-delete": ObjectKind.BUCKET_DELETE,
          "part": ObjectKind.PART, "part-delete": ObjectKind.DELETE, "complete": ObjectKind.COMPLETE}


def store_dir(cfg: SiteConfig) -> str:
    return cfg.s3_dir or os.path.join(cfg.meta, "objects")


def _split(name: str) -> tuple[str, str]:
    bucket, _, key = name.partition("/")
    return bucket, key


class ObjectsPrimary:
    def __init__(self, cfg: SiteConfig, send: Callable[[wire.Message], None]) -> None:
        self.cfg = cfg
        self._send = send
        self.store = Store(store_dir(cfg))
        self._may_differ_path = os.path.join(cfg.meta, MAY_DIFFER_FILE)
        may_differ = load_may_differ(self._may_differ_path)
        record_path = os.path.join(cfg.meta, RECORD_FILE)
        if os.path.exists(record_path):  # we were a secondary: our record may differ now
            journal = ObjectRecordJournal.open(record_path)
            may_differ |= set(journal.record)
            journal.close()
            store_may_differ(self._may_differ_path, may_differ)
            os.unlink(record_path)
        self.core = ObjectPrimaryCore(
            ObjectConfig(cfg.mode, cfg.s3_record_capacity, cfg.s3_record_bytes, cfg.s3_budget,
                         min(cfg.s3_prefix_entry_max, cfg.s3_record_capacity), cfg.s3_window_bytes),
            may_differ, self._compared, local_index=StoreIndex(self.store))
        self.store.gate = self
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._committing: dict[int, concurrent.futures.Future[None]] = {}
        self._answering: dict[int, concurrent.futures.Future[None]] = {}
        self._reader = concurrent.futures.ThreadPoolExecutor(1, "objects-resync")
        self._runner: object | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        assert self.cfg.s3_listen is not None and self.cfg.s3_credentials_file is not None
        credentials = load_credentials(self.cfg.s3_credentials_file)
        tls_ctx = tls.server_context(self.cfg.s3_tls_dir) if self.cfg.s3_tls_dir else None
        host, port = self.cfg.s3_listen
        try:
            self._runner, self.address = await start_server(
                S3Frontend(self.store, credentials), host, port, tls_ctx)
        except OSError as exc:
            raise listen_error("[s3] listen", self.cfg.s3_listen, exc) from None
        log.info("objects: serving S3 on %s:%d from %s", *self.address, self.store.dir)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # type: ignore[attr-defined]
        for future in (*self._committing.values(), *self._answering.values()):
            if not future.done():
                future.set_exception(S3Error("ServiceUnavailable", "the site is stopping"))
        self._reader.shutdown(wait=True)
        self.store.close()

    # -- link events (on the loop) ---------------------------------------------------------------

    def receive(self, message: ObjectMessage) -> None:
        self.core.receive(message)
        self.pump()

    def connected(self) -> None:
        self.core.connected()
        self.pump()

    def disconnected(self) -> None:
        self.core.disconnected()
        self.pump()

    def verify(self) -> bool:
        started = self.core.start_verify()
        self.pump()
        return started

    def status(self) -> dict[str, object]:
        """``objects`` in /status: the front end's mirror, as for the volume."""
        stats = self.core.statistics()
        listing = self._listing()
        return {"role": "primary", "link": stats.link, "objects": len(listing),
                "bytes": sum(i.size for b, _ in self.store.buckets() for k in self.store.sorted_keys(b)
                             if (i := self.store.info(b, k)) is not None),
                "record_entries": stats.record_entries, "record_bytes": stats.record_bytes,
                "record_names": stats.record_names, "record_prefixes": stats.record_prefixes,
                "hits": stats.hits, "misses": stats.misses, "may_differ": stats.may_differ,
                "in_flight": stats.ops_in_flight, "lag_ops": stats.last_seq - stats.durable_seq,
                "resyncs": stats.resyncs, "in_sync": self.core.in_sync,
                "window_used_bytes": stats.window_used_bytes, "waiting_window": stats.waiting_window,
                "verify_mismatches": (None if stats.verify_mismatches is None
                                      else list(stats.verify_mismatches))}

    # -- the store's gate (worker threads) -------------------------------------------------------

    def before(self, kind: str, bucket: str, key: str, pending: PendingObject | None,
               info: ObjectInfo | None, detail: dict[str, Any] | None = None) -> object:
        name = f"{bucket}/{key}" if kind in ("put", "delete", "complete") else bucket
        meta = info.to_json() if info is not None else b""
        parts: tuple[str, ...] = ()
        if not self.cfg.s3_mirror_parts and kind in ("part", "part-delete", "complete"):
            if kind != "complete":
                return None  # parts are not mirrored: the object goes whole at Complete
            kind = "put"
        if kind in ("part", "part-delete"):
            assert detail is not None
            name = part_name(bucket, detail["upload_id"], detail["number"])
            if kind == "part":
                meta = json.dumps({"info": json.loads(meta), "upload": detail["upload"]}).encode()
        elif kind == "complete":
            assert detail is not None and info is not None
            chosen = [(int(n), str(e)) for n, e in detail["parts"]]
            parts = completion_parts(bucket, detail["upload_id"], chosen)
            if self._ask(functools.partial(self.core.complete_is_small, parts)):
                # The secondary assembles it from its durable parts: no data crosses now.
                meta, pending = completion_meta(meta, detail["upload_id"], chosen), None
            else:
                kind, parts = "put", ()  # a part may not be there: the object goes whole
        data = b""
        if pending is not None and info is not None:
            with open(pending.path, "rb") as f:
                data = f.read(info.size)
        op_id = next(self._ids)
        committing: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._committing[op_id] = committing
        self._answering[op_id] = concurrent.futures.Future()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._submit, op_id, int(_KINDS[kind]), name, meta, data,
                                        parts)
        committing.result()
        return op_id

    def _ask(self, question: Callable[[], bool]) -> bool:
        """The core's answer to ``question``, from a worker thread (on the loop)."""
        assert self._loop is not None
        answer: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(lambda: answer.set_result(question()))
        try:  # bounded: a loop that stops meanwhile never answers
            return answer.result(timeout=ASK_S)
        except concurrent.futures.TimeoutError:
            raise S3Error("ServiceUnavailable", "the site is stopping") from None

    def after(self, token: object, ok: bool) -> None:
        if token is None:  # a part, not mirrored (``[s3] mirror_parts = false``)
            return
        assert isinstance(token, int) and self._loop is not None
        self._loop.call_soon_threadsafe(self._committed, token, ok)
        self._answering[token].result()

    def _submit(self, op_id: int, kind: int, name: str, meta: bytes, data: bytes,
                parts: tuple[str, ...] = ()) -> None:
        self.core.submit(op_id, kind, name, meta, data, parts)
        self.pump()

    def _committed(self, op_id: int, ok: bool) -> None:
        self.core.committed(op_id, ok)
        self.pump()

    # -- the core's actions ------------------------------------------------------------------------

    def pump(self) -> None:
        for action in self.core.actions():
            match action:
                case SendObject(message):
                    self._send_object(message)
                case CommitLocal(op_id):
                    _resolve(self._committing.pop(op_id))
                case AnswerClient(op_id):
                    _resolve(self._answering.pop(op_id))
                case PersistMayDiffer(names):
                    store_may_differ(self._may_differ_path, names)
                case ReadForResync(op_id, name):
                    assert self._loop is not None
                    read = self._loop.run_in_executor(self._reader, self._read, name)
                    read.add_done_callback(functools.partial(self._resync_read, op_id))

    def _send_object(self, message: ObjectMessage) -> None:
        if isinstance(message, ObjectOp) and len(message.data) > CHUNK_BYTES:
            for offset in range(0, len(message.data), CHUNK_BYTES):
                self._send(ObjectChunk(message.seq, offset, message.data[offset:offset + CHUNK_BYTES]))
            message = ObjectOp(message.seq, message.kind, message.flags | int(ObjectFlag.CHUNKED),
                               message.budget, message.name, message.removals, message.meta, b"")
        self._send(message)

    def _read(self, name: str) -> tuple[bytes | None, bytes]:
        part = parse_part_name(name)
        if part is not None:
            return self._read_part(*part)
        if "/" not in name:  # a bucket: whether it exists (BUCKET_CREATE or BUCKET_DELETE)
            return (b"", b"") if self.store.has_bucket(name) else (None, b"")
        bucket, key = _split(name)
        try:
            opened = self.store.open_object(bucket, key)
        except S3Error:
            return None, b""  # no such bucket or key: the secondary deletes it
        try:
            return opened.info.to_json(), opened.read(0, opened.info.size)
        finally:
            opened.close()

    def _read_part(self, bucket: str, upload_id: str, number: int) -> tuple[bytes | None, bytes]:
        """A part's current state for a resync: its info and upload, with its data, or None if
        the upload or the part is gone here (the secondary deletes its copy)."""
        doc = self.store.upload_document(upload_id)
        opened = self.store.open_part(upload_id, number) if doc and doc["bucket"] == bucket else None
        if doc is None or opened is None:
            return None, b""
        try:
            meta = json.dumps({"info": json.loads(opened.info.to_json()), "upload": doc}).encode()
            return meta, opened.read(0, opened.info.size)
        finally:
            opened.close()

    def _resync_read(self, op_id: int, done: asyncio.Future[tuple[bytes | None, bytes]]) -> None:
        try:
            meta, data = done.result()
        except (OSError, StorageError) as exc:
            log.error("objects: cannot read %d for resync: %s", op_id, exc)
            meta, data = None, b""
        self.core.resync_read(op_id, meta, data)
        self.pump()

    def _compared(self) -> dict[str, str]:
        """What a full compare (async connect, verify) holds against the secondary's: every
        object and every part of an upload in progress, with its ETag."""
        found = self._listing()
        found.update(self.store.part_listing())
        return found

    def _listing(self) -> dict[str, str]:
        return {f"{bucket}/{key}": info.etag
                for bucket, _ in self.store.buckets()
                for key in self.store.sorted_keys(bucket)
                if (info := self.store.info(bucket, key)) is not None}


class StoreIndex:
    """The primary's store as the core's ``LocalIndex`` (prefix entries): a bisect over a
    bucket's sorted keys, never a walk of the whole store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def weigh(self, directory: str, limit: int) -> tuple[int, int] | None:
        bucket, prefix = _split(directory)
        keys = self._store.keys_under(bucket, prefix, limit)
        if len(keys) > limit:
            return None
        return len(keys), sum(len(bucket.encode("utf-8")) + 1 + len(k.encode("utf-8")) for k in keys)

    def names_under(self, directory: str) -> list[str]:
        bucket, prefix = _split(directory)
        return [f"{bucket}/{key}" for key in self._store.keys_under(bucket, prefix)]

    def has(self, name: str) -> bool:
        bucket, key = _split(name)
        return self._store.has_bucket(bucket) and self._store.info(bucket, key) is not None


def _resolve(future: concurrent.futures.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ObjectsSecondary:
    def __init__(self, cfg: SiteConfig, send: Callable[[wire.Message], None]) -> None:
        self._send = send
        self.store = Store(store_dir(cfg))
        self.journal = ObjectRecordJournal.open(os.path.join(cfg.meta, RECORD_FILE))
        may_differ_path = os.path.join(cfg.meta, MAY_DIFFER_FILE)
        if os.path.exists(may_differ_path):  # we were the primary: what may differ is recorded
            self.journal.update(sorted(load_may_differ(may_differ_path)), ())
            os.unlink(may_differ_path)
        self.core = ObjectSecondaryCore(LinksPredictor(), OrderedDict(self.journal.record))
        self._queue: asyncio.Queue[ObjectMessage] = asyncio.Queue()
        self._chunks: dict[int, PendingObject] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[list[wire.Message]] | None = None
        self.applied_seq = 0

    def receive(self, message: ObjectMessage) -> None:
        self._queue.put_nowait(message)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Apply the object frames in order, one at a time in a worker thread."""
        assert self._loop is not None
        while True:
            message = await self._queue.get()
            self._inflight = self._loop.run_in_executor(None, self._apply, message)
            try:
                replies = await asyncio.shield(self._inflight)
            except (StorageError, OSError, S3Error, ValueError) as exc:
                # The op could not be applied: acknowledge nothing more on this connection.
                log.error("objects: cannot apply %s: %s; the link is closed", type(message).__name__, exc)
                self._send(wire.StorageFailed(int(wire.StorageArea.IMAGE), 5, f"objects: {exc}"))
                self._queue = asyncio.Queue()
                continue
            for reply in replies:
                self._send(reply)

    async def aclose(self, drain_s: float = DRAIN_S) -> None:
        """Apply what has arrived (for up to ``drain_s``: a promotion keeps every op the old
        primary sent), stop (the op being applied finishes first), then close the files."""
        deadline = asyncio.get_running_loop().time() + drain_s
        while (self._task is not None and not self._task.done() and not self._queue.empty()
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        for pending in self._chunks.values():
            pending.abort()
        self.journal.close()
        self.store.close()

    def _apply(self, message: ObjectMessage) -> list[wire.Message]:
        match message:
            case ObjectChunk(seq, offset, data):
                pending = self._chunks.setdefault(seq, self.store.begin())
                if offset != pending.size:
                    raise StorageError(f"object chunk of op {seq} at {offset}, expected {pending.size}")
                pending.write(data)
                return []
            case ObjectOp():
                return self._apply_op(message)
            case ObjectRemove():
                self.journal.update((), self.core.on_remove(message))
                return []
            case ObjectListRequest(request, what, directory):
                if what == ListWhat.RECORD:
                    return list(list_frames(request, what, [(n, "") for n in self.core.record]))
                if what == ListWhat.UNDER:
                    return list(list_frames(request, what, self._listing_under(directory)))
                return list(list_frames(request, what, [*self._listing(),
                                                         *self.store.part_listing().items()]))
        raise AssertionError(f"the secondary got {type(message).__name__}")

    def _apply_op(self, op: ObjectOp) -> list[wire.Message]:
        change = self.core.on_op(op)
        self.journal.update(change.added, change.removed)
        if change.reply is not None:
            added = ObjectAdded(op.seq, change.reply)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._send, added)  # before the object is written
        bucket, key = _split(op.name)
        kind = ObjectKind(op.kind)
        part = parse_part_name(op.name)
        if kind is ObjectKind.PART or part is not None:
            self._apply_part(op, kind)
        elif kind is ObjectKind.COMPLETE:
            self._complete(op, bucket, key)
        elif kind is ObjectKind.PUT:
            self._put(op, bucket, key)
        elif kind is ObjectKind.DELETE:
            if self.store.has_bucket(bucket):
                self.store.delete_object(bucket, key)
        elif kind is ObjectKind.BUCKET_CREATE:
            if not self.store.has_bucket(op.name):
                self.store.create_bucket(op.name)
        elif self.store.has_bucket(op.name):
            # The primary has no such bucket, so none of its objects: any still here are copies
            # that differ (a resync may send the bucket before they are deleted one by one).
            for stale in self.store.sorted_keys(op.name):
                self.store.delete_object(op.name, stale)
            self.store.delete_bucket(op.name)
        self.applied_seq = op.seq
        return [ObjectDurable(op.seq)]

    def _arrived(self, op: ObjectOp, size: int, what: str) -> PendingObject:
        """An op's data, whole: the chunks that came before it, or its own payload; a size other
        than the one its metadata gives is a storage error (nothing is committed)."""
        pending = self._chunks.pop(op.seq, None) if op.flags & ObjectFlag.CHUNKED else None
        if pending is None:
            pending = self.store.begin()
            pending.write(op.data)
        if pending.size != size:
            pending.abort()
            raise StorageError(f"{what}: {pending.size} bytes arrived, {size} expected")
        return pending

    def _put(self, op: ObjectOp, bucket: str, key: str) -> None:
        info = ObjectInfo.from_json(op.meta)
        pending = self._arrived(op, info.size, f"object {op.name}")
        if not self.store.has_bucket(bucket):
            self.store.create_bucket(bucket)
        self.store.commit_object(pending, bucket, key, info.content_type, info.metadata, etag=info.etag)

    def _apply_part(self, op: ObjectOp, kind: ObjectKind) -> None:
        """A part written (PART) or gone (DELETE: an abort, or a resync of a part no longer
        there) on the primary."""
        part = parse_part_name(op.name)
        if part is None:
            raise StorageError(f"object op {op.seq}: {op.name!r} is not a part's name")
        bucket, upload_id, number = part
        if kind is ObjectKind.DELETE:
            self.store.mirror_part_delete(upload_id, number)
            return
        doc = json.loads(op.meta)
        info = ObjectInfo.from_json(json.dumps(doc["info"]).encode())
        pending = self._arrived(op, info.size, f"part {op.name!r}")
        if not self.store.has_bucket(bucket):
            self.store.create_bucket(bucket)
        self.store.mirror_part(pending, upload_id, doc["upload"], number, info.etag)

    def _complete(self, op: ObjectOp, bucket: str, key: str) -> None:
        """The object assembled from the parts durable here, as the primary did: same parts,
        same order, so the same ETag (checked)."""
        info_json, upload_id, chosen = parse_completion(op.meta)
        want = ObjectInfo.from_json(info_json)
        if not self.store.has_bucket(bucket):
            self.store.create_bucket(bucket)
        got = self.store.complete_upload(upload_id, bucket, key, chosen)
        if got.etag != want.etag:
            raise StorageError(f"object {op.name}: assembled with ETag {got.etag}, the primary's "
                               f"is {want.etag}")

    def _listing(self) -> list[tuple[str, str]]:
        return [(f"{bucket}/{key}", info.etag)
                for bucket, _ in self.store.buckets()
                for key in self.store.sorted_keys(bucket)
                if (info := self.store.info(bucket, key)) is not None]

    def _listing_under(self, directory: str) -> list[tuple[str, str]]:
        bucket, prefix = _split(directory)
        return [(f"{bucket}/{key}", info.etag) for key in self.store.keys_under(bucket, prefix)
                if (info := self.store.info(bucket, key)) is not None]

    def status(self) -> dict[str, object]:
        return {"role": "secondary", "objects": len(self._listing()),
                "record_entries": len(self.core.record), "applied_seq": self.applied_seq}
