"""Hypothesis stateful test: the object ``Store`` against a plain dict, across restarts.

The model is {bucket: {key: (body, metadata)}}. PUTs, copies, deletes, multipart uploads and
failed PUTs (the fsync breaks: nothing may change) run in any order, with the store closed and
reopened from disk between them; after every step the store's keys, every object's bytes, ETag
and metadata, and its listing match the model, and no temporary file is left behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from foresync.objects.listing import list_page
from foresync.objects.store import Store

BUCKETS = st.sampled_from(["alpha", "bravo"])
KEYS = st.sampled_from(["a", "a/b", "a/c", "d/e/f", "frame-001", "frame-002"])
BODIES = st.binary(max_size=64)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="objects-stateful-")
        self.store = Store(os.path.join(self.dir, "s"), part_min_bytes=4)
        self.model: dict[str, dict[str, tuple[bytes, dict[str, str], str]]] = {}
        for bucket in ("alpha", "bravo"):
            self.store.create_bucket(bucket)
            self.model[bucket] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    @rule(bucket=BUCKETS, key=KEYS, body=BODIES, tag=st.sampled_from(["", "x", "y"]))
    def put(self, bucket: str, key: str, body: bytes, tag: str) -> None:
        pending = self.store.begin()
        pending.write(body)
        meta = {"tag": tag} if tag else {}
        info = self.store.commit_object(pending, bucket, key, "app/x", meta)
        self.model[bucket][key] = (body, meta, hashlib.md5(body).hexdigest())
        assert info.etag == hashlib.md5(body).hexdigest()

    @rule(bucket=BUCKETS, key=KEYS, body=BODIES)
    def put_with_failing_fsync(self, bucket: str, key: str, body: bytes) -> None:
        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.store._fsync = broken  # type: ignore[method-assign]
        try:
            pending = self.store.begin()
            pending.write(body)
            try:
                self.store.commit_object(pending, bucket, key, "app/x", {})
            except OSError:
                pass
            else:
                raise AssertionError("a PUT whose fsync failed was committed")
        finally:
            del self.store._fsync

    @rule(bucket=BUCKETS, key=KEYS)
    def delete(self, bucket: str, key: str) -> None:
        self.store.delete_object(bucket, key)
        self.model[bucket].pop(key, None)

    @rule(src=BUCKETS, src_key=KEYS, dst=BUCKETS, dst_key=KEYS)
    def copy(self, src: str, src_key: str, dst: str, dst_key: str) -> None:
        if src_key not in self.model[src]:
            return
        self.store.copy_object(src, src_key, dst, dst_key, None)
        self.model[dst][dst_key] = self.model[src][src_key]

    @rule(bucket=BUCKETS, key=KEYS, parts=st.lists(st.binary(min_size=4, max_size=16), min_size=1,
                                                   max_size=3))
    def multipart(self, bucket: str, key: str, parts: list[bytes]) -> None:
        upload = self.store.create_upload(bucket, key, "app/x", {"m": "1"})
        chosen = []
        for number, body in enumerate(parts, 1):
            pending = self.store.begin()
            pending.write(body)
            chosen.append((number, self.store.commit_part(pending, upload, bucket, key, number).etag))
        info = self.store.complete_upload(upload, bucket, key, chosen)
        digest = hashlib.md5(b"".join(bytes.fromhex(e) for _, e in chosen)).hexdigest()
        self.model[bucket][key] = (b"".join(parts), {"m": "1"}, f"{digest}-{len(parts)}")
        assert info.etag == f"{digest}-{len(parts)}"

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(os.path.join(self.dir, "s"), part_min_bytes=4)

    @invariant()
    def matches_the_model(self) -> None:
        for bucket, objects in self.model.items():
            keys = self.store.sorted_keys(bucket)
            assert keys == sorted(objects)
            page = list_page(keys, delimiter="/")
            assert page.count == len({k.split("/")[0] + ("/" if "/" in k else "") for k in objects})
            for key, (body, meta, etag) in objects.items():
                opened = self.store.open_object(bucket, key)
                try:
                    assert opened.read(0, 1 << 20) == body
                    assert (opened.info.etag, opened.info.metadata) == (etag, meta)
                finally:
                    opened.close()
        assert os.listdir(os.path.join(self.store.dir, "tmp")) == []


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestStore = StoreMachine.TestCase
