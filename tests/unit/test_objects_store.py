"""objects/store.py: visible only when whole, metadata durable with the data, torn leftovers never
used, multipart ETags as S3 computes them, and no key reaches outside its bucket."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from foresync.errors import ConfigError, StorageError
from foresync.objects.s3errors import S3Error
from foresync.objects.store import Store


def put(store: Store, bucket: str, key: str, body: bytes, **meta: str) -> str:
    pending = store.begin()
    pending.write(body)
    return store.commit_object(pending, bucket, key, "text/plain", dict(meta)).etag


def read(store: Store, bucket: str, key: str) -> bytes:
    opened = store.open_object(bucket, key)
    try:
        return opened.read(0, opened.info.size)
    finally:
        opened.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path / "objects"), part_min_bytes=10)
    s.create_bucket("bkt")
    return s


def test_put_get_metadata_and_reopen(store: Store, tmp_path: Path) -> None:
    etag = put(store, "bkt", "a/b", b"hello", colour="blue")
    assert etag == hashlib.md5(b"hello").hexdigest()
    assert read(store, "bkt", "a/b") == b"hello"
    store.close()
    again = Store(str(tmp_path / "objects"))
    info = again.open_object("bkt", "a/b").info
    assert (info.size, info.etag, info.content_type, info.metadata) == (5, etag, "text/plain",
                                                                        {"colour": "blue"})
    assert again.sorted_keys("bkt") == ["a/b"]


def test_a_failed_fsync_leaves_the_old_object_and_no_temporary_file(store: Store) -> None:
    put(store, "bkt", "k", b"old")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    store._fsync = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        put(store, "bkt", "k", b"new")
    assert read(store, "bkt", "k") == b"old"
    assert os.listdir(os.path.join(store.dir, "tmp")) == []


def test_a_reader_keeps_the_object_it_opened_across_a_replace_and_a_delete(store: Store) -> None:
    put(store, "bkt", "k", b"first")
    opened = store.open_object("bkt", "k")
    put(store, "bkt", "k", b"second!")
    store.delete_object("bkt", "k")
    assert opened.read(0, 100) == b"first" and opened.info.size == 5
    opened.close()
    with pytest.raises(S3Error) as exc:
        store.open_object("bkt", "k")
    assert exc.value.code == "NoSuchKey"


def test_leftovers_are_cleared_and_damaged_files_moved_aside(store: Store, tmp_path: Path) -> None:
    put(store, "bkt", "good", b"g")
    put(store, "bkt", "bad", b"b" * 100)
    bad = Path(store._object_path("bkt", "bad"))
    with bad.open("r+b") as f:
        f.truncate(50)  # a torn file where a whole one should be: never served
    Path(store.dir, "tmp", "put-leftover").write_bytes(b"half a body")
    store.close()
    again = Store(str(tmp_path / "objects"))
    assert again.sorted_keys("bkt") == ["good"]
    assert os.listdir(os.path.join(again.dir, "tmp")) == []
    assert len(os.listdir(os.path.join(again.dir, "damaged"))) == 1
    with pytest.raises(S3Error):
        again.open_object("bkt", "bad")


def test_one_process_per_store_and_no_foreign_directory(tmp_path: Path, store: Store) -> None:
    with pytest.raises(ConfigError, match="another process"):
        Store(store.dir)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not an object store"):
        Store(str(tmp_path / "foreign"))


def test_buckets_life_cycle(store: Store) -> None:
    with pytest.raises(S3Error) as exc:
        store.create_bucket("bkt")
    assert exc.value.code == "BucketAlreadyOwnedByYou"
    put(store, "bkt", "k", b"x")
    with pytest.raises(S3Error) as exc:
        store.delete_bucket("bkt")
    assert exc.value.code == "BucketNotEmpty"
    store.delete_object("bkt", "k")
    store.delete_bucket("bkt")
    assert store.buckets() == []
    with pytest.raises(S3Error) as exc:
        put(store, "bkt", "k", b"x")
    assert exc.value.code == "NoSuchBucket"


def test_keys_never_name_a_path_outside_the_bucket(store: Store) -> None:
    for key in ("../../escape", "/etc/passwd", "a\x00b"):
        with pytest.raises(S3Error):
            put(store, "bkt", key, b"x")
    put(store, "bkt", "..a/b..", b"x")
    path = Path(store._object_path("bkt", "..a/b.."))
    assert path.resolve().is_relative_to(Path(store.dir, "buckets", "bkt").resolve())


def test_multipart_etag_is_md5_of_part_md5s(store: Store) -> None:
    upload = store.create_upload("bkt", "big", "app/x", {"m": "1"})
    etags = []
    for number, body in ((1, b"a" * 10), (2, b"b" * 12), (3, b"c")):
        pending = store.begin()
        pending.write(body)
        etags.append(store.commit_part(pending, upload, "bkt", "big", number).etag)
    info = store.complete_upload(upload, "bkt", "big", list(zip((1, 2, 3), etags, strict=True)))
    expected = hashlib.md5(b"".join(bytes.fromhex(e) for e in etags)).hexdigest()
    assert info.etag == f"{expected}-3" and info.metadata == {"m": "1"}
    assert read(store, "bkt", "big") == b"a" * 10 + b"b" * 12 + b"c"
    with pytest.raises(S3Error) as exc:
        store.parts(upload, "bkt", "big")
    assert exc.value.code == "NoSuchUpload"
    with pytest.raises(S3Error) as exc:
        store.upload("../../x" + "0" * 24, "bkt", "big")
    assert exc.value.code == "NoSuchUpload"


def test_copy_keeps_data_and_etag(store: Store) -> None:
    etag = put(store, "bkt", "src", b"payload", k="v")
    info = store.copy_object("bkt", "src", "bkt", "dst", None)
    assert info.etag == etag and info.metadata == {"k": "v"}
    assert read(store, "bkt", "dst") == b"payload"


def test_keys_under_a_prefix_stop_one_past_the_limit(store: Store) -> None:
    store.create_bucket("keys")
    for key in ("a/1", "a/2", "a/3", "a/sub/4", "ab", "b/1"):
        put(store, "keys", key, b"x")
    assert store.keys_under("keys", "a/") == ["a/1", "a/2", "a/3", "a/sub/4"]
    assert store.keys_under("keys", "a/", limit=2) == ["a/1", "a/2", "a/3"]  # "more than 2"
    assert store.keys_under("keys", "c/") == [] and store.keys_under("nobucket", "a/") == []


class _Gate:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, object]] = []

    def before(self, kind: str, bucket: str, key: str, pending: object, info: object,
               detail: dict[str, object] | None = None) -> object:
        self.seen.append((kind, key, detail and {k: v for k, v in detail.items() if k != "upload"}))
        return len(self.seen)

    def after(self, token: object, ok: bool) -> None:
        assert ok


def _part(store: Store, upload: str, number: int, body: bytes) -> str:
    pending = store.begin()
    pending.write(body)
    return store.commit_part(pending, upload, "bkt", "big", number).etag


def test_parts_complete_and_abort_pass_the_gate_with_what_the_mirror_needs(store: Store) -> None:
    gate = _Gate()
    store.gate = gate
    upload = store.create_upload("bkt", "big", "app/x", {})
    etags = [_part(store, upload, n, bytes([n]) * 10) for n in (1, 2)]
    store.complete_upload(upload, "bkt", "big", [(1, etags[0]), (2, etags[1])])
    doomed = store.create_upload("bkt", "big", "app/x", {})
    _part(store, doomed, 1, b"x" * 10)
    _part(store, doomed, 4, b"y" * 10)
    store.abort_upload(doomed, "bkt", "big")
    assert gate.seen == [
        ("part", "big", {"upload_id": upload, "number": 1}),
        ("part", "big", {"upload_id": upload, "number": 2}),
        ("complete", "big", {"upload_id": upload, "parts": [[1, etags[0]], [2, etags[1]]]}),
        ("part", "big", {"upload_id": doomed, "number": 1}),
        ("part", "big", {"upload_id": doomed, "number": 4}),
        ("part-delete", "big", {"upload_id": doomed, "number": 1}),  # an abort, part by part
        ("part-delete", "big", {"upload_id": doomed, "number": 4}),
    ]
    assert store.part_listing() == {}


def test_a_mirror_assembles_the_same_object_from_its_own_parts(store: Store, tmp_path: Path) -> None:
    upload = store.create_upload("bkt", "big", "app/x", {"m": "1"})
    bodies = [b"a" * 10, b"b" * 12, b"c"]
    etags = [_part(store, upload, n, body) for n, body in enumerate(bodies, 1)]
    doc = store.upload(upload, "bkt", "big")
    mirror = Store(str(tmp_path / "mirror"), part_min_bytes=10)
    mirror.create_bucket("bkt")
    for number, (body, etag) in enumerate(zip(bodies, etags, strict=True), 1):
        pending = mirror.begin()
        pending.write(body)
        mirror.mirror_part(pending, upload, doc, number, etag)
    assert mirror.part_listing() == store.part_listing() and len(store.part_listing()) == 3
    bad = mirror.begin()
    bad.write(b"not the part")
    with pytest.raises(StorageError):  # a part whose ETag differs is refused, never kept
        mirror.mirror_part(bad, upload, doc, 1, etags[0])
    chosen = list(enumerate(etags, 1))
    assert (mirror.complete_upload(upload, "bkt", "big", chosen).etag
            == store.complete_upload(upload, "bkt", "big", chosen).etag)
    assert read(mirror, "bkt", "big") == read(store, "bkt", "big") == b"".join(bodies)
    assert mirror.part_listing() == {}


def test_a_mirrors_last_part_deleted_takes_the_upload_with_it(store: Store) -> None:
    upload = store.create_upload("bkt", "big", "app/x", {})
    _part(store, upload, 1, b"x" * 10)
    _part(store, upload, 2, b"y" * 10)
    store.mirror_part_delete(upload, 1)
    assert store.parts(upload, "bkt", "big")[0][0] == 2
    store.mirror_part_delete(upload, 2)
    assert store.upload_document(upload) is None
    store.mirror_part_delete(upload, 3)  # gone already: nothing to do
