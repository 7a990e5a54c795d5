"""Multipart uploads mirrored part by part by a real pair (issue 18): boto3 against ``foresync run``.

Each part is an op on a name of its own (objects/parts.py), so it reaches the secondary as it is
uploaded; CompleteMultipartUpload is then a small op that the secondary assembles from its own
parts, with the same ETag (MD5 of the part MD5s, ``-N``). What each site holds is read from its
files directly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .sites import MakePair, Site
from .test_objects_pair import client, listing, objects_pair, verify_objects, wait_same

PART_BYTES = 8 * 1024 * 1024


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


def parts_on(site: Site) -> dict[str, list[str]]:
    """upload id -> its part files, in the site's store (``<meta>/objects/uploads``)."""
    root = site.meta_path / "objects" / "uploads"
    return {u: sorted(n for n in os.listdir(root / u) if n.startswith("part-"))
            for u in os.listdir(root)} if root.exists() else {}


@pytest.mark.parametrize("mode", ["lookahead", "sync", "async"])
def test_parts_reach_the_secondary_as_uploaded_and_complete_is_assembled_there(
        make_pair: MakePair, tmp_path: Path, mode: str) -> None:
    pair, ports = objects_pair(make_pair, tmp_path, mode)
    s3 = client(ports, pair.primary)
    s3.create_bucket(Bucket="backup")
    bodies = [os.urandom(PART_BYTES) for _ in range(5)] + [os.urandom(1024 * 1024)]  # 41 MiB
    upload = s3.create_multipart_upload(Bucket="backup", Key="big.tar")["UploadId"]
    chosen = []
    for number, body in enumerate(bodies, 1):
        answer = s3.upload_part(Bucket="backup", Key="big.tar", UploadId=upload,
                                PartNumber=number, Body=body)
        chosen.append({"PartNumber": number, "ETag": answer["ETag"]})
        if mode == "sync":  # answered: on the secondary's disk already
            assert f"part-{number:05d}" in parts_on(pair.secondary)[upload]
    pair.wait_for("every part on the secondary",
                  lambda: len(parts_on(pair.secondary).get(upload, [])) == len(bodies))
    stats = pair.status(pair.primary)["objects"]
    # The first part misses; the secondary records the upload's next parts with it (prediction).
    assert stats["misses"] < len(bodies), stats
    answer = s3.complete_multipart_upload(Bucket="backup", Key="big.tar", UploadId=upload,
                                          MultipartUpload={"Parts": chosen})
    etag = answer["ETag"].strip('"')
    assert etag == multipart_etag(bodies)
    same = wait_same(pair, pair.primary, pair.secondary)
    assert same["backup/big.tar"] == etag  # assembled there from its parts: the same ETag
    pair.wait_for("the upload gone on both sites",
                  lambda: parts_on(pair.primary) == parts_on(pair.secondary) == {})
    path = pair.secondary.meta_path / "objects" / "buckets" / "backup"
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) > len(b"".join(bodies))

    # An abort deletes the parts on both sites.
    doomed = s3.create_multipart_upload(Bucket="backup", Key="doomed.tar")["UploadId"]
    for number in (1, 2):
        s3.upload_part(Bucket="backup", Key="doomed.tar", UploadId=doomed, PartNumber=number,
                       Body=os.urandom(1024))
    pair.wait_for("the parts on the secondary", lambda: len(parts_on(pair.secondary).get(doomed, [])) == 2)
    s3.abort_multipart_upload(Bucket="backup", Key="doomed.tar", UploadId=doomed)
    pair.wait_for("the aborted upload gone on the secondary", lambda: parts_on(pair.secondary) == {})
    pair.wait_for("objects in sync", lambda: pair.status(pair.primary)["objects"]["in_sync"])
    assert verify_objects(pair, pair.primary) == []


@pytest.mark.parametrize("mode", ["lookahead", "sync"])
def test_kill_9_mid_upload_then_the_promoted_site_completes_it_and_failback_converges(
        make_pair: MakePair, tmp_path: Path, mode: str) -> None:
    pair, ports = objects_pair(make_pair, tmp_path, mode)
    s3 = client(ports, pair.primary)
    s3.create_bucket(Bucket="backup")
    done = [os.urandom(PART_BYTES) for _ in range(5)]
    upload = s3.create_multipart_upload(Bucket="backup", Key="done.tar")["UploadId"]
    chosen = [{"PartNumber": n, "ETag": s3.upload_part(Bucket="backup", Key="done.tar", UploadId=upload,
                                                        PartNumber=n, Body=b)["ETag"]}
              for n, b in enumerate(done, 1)]
    s3.complete_multipart_upload(Bucket="backup", Key="done.tar", UploadId=upload,
                                 MultipartUpload={"Parts": chosen})
    torn = [os.urandom(PART_BYTES) for _ in range(5)]
    open_upload = s3.create_multipart_upload(Bucket="backup", Key="open.tar")["UploadId"]
    for n, body in enumerate(torn[:3], 1):
        s3.upload_part(Bucket="backup", Key="open.tar", UploadId=open_upload, PartNumber=n, Body=body)
    pair.wait_for("the parts on the secondary",
                  lambda: len(parts_on(pair.secondary).get(open_upload, [])) == 3)
    pair.kill9(pair.primary)  # mid upload: three parts of open.tar, never completed there

    pair.promote(pair.secondary)
    pair.wait_role(pair.secondary, "primary")
    on_secondary = listing(pair.secondary)
    assert on_secondary == {"backup/done.tar": multipart_etag(done)}  # intact, nothing torn
    # The promoted site holds the upload's parts: the client carries on and completes it there.
    s3b = client(ports, pair.secondary)
    listed = s3b.list_parts(Bucket="backup", Key="open.tar", UploadId=open_upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    chosen = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]
    for n, body in enumerate(torn[3:], 4):
        chosen.append({"PartNumber": n, "ETag": s3b.upload_part(
            Bucket="backup", Key="open.tar", UploadId=open_upload, PartNumber=n, Body=body)["ETag"]})
    answer = s3b.complete_multipart_upload(Bucket="backup", Key="open.tar", UploadId=open_upload,
                                           MultipartUpload={"Parts": chosen})
    assert answer["ETag"].strip('"') == multipart_etag(torn)

    # Failback: the old primary comes back as the secondary; both sites converge.
    pair.restart(pair.primary)
    pair.wait_role(pair.primary, "secondary", timeout_s=30)
    same = wait_same(pair, pair.secondary, pair.primary, timeout_s=60)
    assert same == {"backup/done.tar": multipart_etag(done), "backup/open.tar": multipart_etag(torn)}
    pair.wait_for("no upload left on either site",
                  lambda: parts_on(pair.primary) == parts_on(pair.secondary) == {}, 60)
    assert verify_objects(pair, pair.secondary) == []
