"""Objects mirrored by a real pair of ``foresync run`` processes (issue 18, phase 2), driven by boto3.

Each site's config has an ``[s3]`` section with its own port; only the primary serves it. What
each site holds is read from its object files directly (``listing``: name -> etag, from each
file's trailer), so the test sees the secondary's store as it is on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from foresync.objects.object_file import read_trailer

from .objects_server import ACCESS_KEY, SECRET, boto3_client, client_env
from .sites import MakePair, Settings, Site, SitePair, free_ports


def _s3_settings(mode: str, tmp_path: Path, port: int) -> Settings:
    creds = tmp_path / "s3-credentials"
    creds.write_text(f"{ACCESS_KEY} {SECRET}\n")
    return Settings(size="16MiB", capacity=16, lookahead=2, mode=mode,
                    admin_extra=f'[s3]\nlisten = "127.0.0.1:{port}"\ncredentials_file = "{creds}"\n'
                                "record_capacity = 64\nlookahead = 4\n")


def objects_pair(make_pair: MakePair, tmp_path: Path, mode: str,
                 via_proxy: bool = False) -> tuple[SitePair, dict[str, int]]:
    port_p, port_s = free_ports(2)
    ports = {"primary": port_p, "secondary": port_s}
    pair = make_pair(Settings(), primary=_s3_settings(mode, tmp_path, ports["primary"]),
                     secondary=_s3_settings(mode, tmp_path, ports["secondary"]), via_proxy=via_proxy)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    return pair, ports


def client(ports: dict[str, int], site: Site) -> Any:
    return boto3_client(f"http://127.0.0.1:{ports[site.role]}")


def listing(site: Site) -> dict[str, str]:
    """name -> etag of every object file in the site's store (``<meta>/objects``)."""
    found: dict[str, str] = {}
    root = site.meta_path / "objects" / "buckets"
    if not root.exists():
        return found
    for bucket in os.listdir(root):
        for directory, _, files in os.walk(root / bucket):
            for name in files:
                info = read_trailer(os.path.join(directory, name))
                found[f"{bucket}/{info.key}"] = info.etag
    return found


def wait_same(pair: SitePair, a: Site, b: Site, timeout_s: float = 30.0) -> dict[str, str]:
    pair.wait_for("the same objects on both sites", lambda: listing(a) == listing(b), timeout_s)
    return listing(a)


def verify_objects(pair: SitePair, site: Site) -> list[str]:
    """POST /objects/verify, then the names it found differing."""
    request = urllib.request.Request(f"http://127.0.0.1:{site.admin_port}/objects/verify",
                                     data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.load(answer) == {"started": True}
    pair.wait_for("an objects verify", lambda: pair.status(site)["objects"]["verify_mismatches"] is not None)
    found: list[str] = pair.status(site)["objects"]["verify_mismatches"]
    return found


@pytest.mark.parametrize("mode", ["lookahead", "sync", "async"])
def test_puts_deletes_and_copies_through_the_primary_reach_the_secondary(
        make_pair: MakePair, tmp_path: Path, mode: str) -> None:
    pair, ports = objects_pair(make_pair, tmp_path, mode)
    s3 = client(ports, pair.primary)
    s3.create_bucket(Bucket="photos")
    etags = {}
    for i in range(30):
        answer = s3.put_object(Bucket="photos", Key=f"day1/frame-{i:06d}.jpg", Body=os.urandom(4096 + i))
        etags[f"photos/day1/frame-{i:06d}.jpg"] = answer["ETag"].strip('"')
    s3.delete_object(Bucket="photos", Key="day1/frame-000003.jpg")
    del etags["photos/day1/frame-000003.jpg"]
    s3.copy_object(Bucket="photos", Key="copy.jpg", CopySource={"Bucket": "photos", "Key": "day1/frame-000007.jpg"})
    etags["photos/copy.jpg"] = etags["photos/day1/frame-000007.jpg"]
    assert listing(pair.primary) == etags
    assert wait_same(pair, pair.primary, pair.secondary) == etags
    # The secondary's record covers the names written (the hits since), within its bound: by
    # name, or by the prefix entry of their directory (objects/entries.py: the directory, NUL).
    if mode != "async":
        journal = pair.secondary.meta_path / "objects-record.journal"
        recorded = journal.read_bytes()
        assert b"frame-000029" in recorded or b"photos/day1/\x00" in recorded
    # /status says so, and a verify of names and etags finds nothing to copy.
    pair.wait_for("objects in sync", lambda: pair.status(pair.primary)["objects"]["in_sync"])
    assert verify_objects(pair, pair.primary) == []
    assert pair.status(pair.secondary)["objects"]["objects"] == len(etags)
    with urllib.request.urlopen(f"http://127.0.0.1:{pair.primary.admin_port}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert f'foresync_objects{{frontend="s3",site="primary",volume="vol0"}} {len(etags)}.0' in metrics
    # The secondary does not serve S3 while it is the secondary.
    with pytest.raises(Exception):  # noqa: B017 (connection refused, whatever botocore calls it)
        client(ports, pair.secondary).list_buckets()


@pytest.mark.parametrize("mode", ["lookahead", "sync"])
def test_kill_9_of_the_primary_mid_multipart_then_promote_and_failback(
        make_pair: MakePair, tmp_path: Path, mode: str) -> None:
    pair, ports = objects_pair(make_pair, tmp_path, mode)
    s3 = client(ports, pair.primary)
    s3.create_bucket(Bucket="backup")
    s3.create_bucket(Bucket="doomed")  # deleted on the promoted site: the failback deletes it
    acked: dict[str, str] = {}
    stop = threading.Event()

    def small_puts() -> None:
        put = client(ports, pair.primary)
        for i in range(100000):
            if stop.is_set():
                return
            key = f"small/{i % 40:03d}/obj-{i:06d}"
            try:
                answer = put.put_object(Bucket="backup", Key=key, Body=os.urandom(4096))
            except Exception:  # the primary died under us: this one was never acknowledged
                return
            acked[f"backup/{key}"] = answer["ETag"].strip('"')

    writer = threading.Thread(target=small_puts)
    writer.start()
    part = os.urandom(5 * 1024 * 1024)
    done = s3.create_multipart_upload(Bucket="backup", Key="big.tar")
    parts = []
    for number in (1, 2):
        answer = s3.upload_part(Bucket="backup", Key="big.tar", UploadId=done["UploadId"],
                                PartNumber=number, Body=part)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket="backup", Key="big.tar", UploadId=done["UploadId"],
                                 MultipartUpload={"Parts": parts})
    big = s3.head_object(Bucket="backup", Key="big.tar")["ETag"].strip('"')
    second = s3.create_multipart_upload(Bucket="backup", Key="big2.tar")
    s3.upload_part(Bucket="backup", Key="big2.tar", UploadId=second["UploadId"], PartNumber=1, Body=part)
    while len(acked) < 60:
        time.sleep(0.05)
    pair.kill9(pair.primary)  # mid upload: big2.tar has a part, never completed
    stop.set()
    writer.join()
    acked_now = dict(acked)
    acked_now["backup/big.tar"] = big

    pair.promote(pair.secondary)
    pair.wait_role(pair.secondary, "primary")
    on_secondary = listing(pair.secondary)
    missing = {n: e for n, e in acked_now.items() if on_secondary.get(n) != e}
    assert not missing, f"acknowledged objects missing or different on the secondary: {sorted(missing)[:5]}"
    assert "backup/big2.tar" not in on_secondary
    # The promoted site serves S3 from its copy.
    s3b = client(ports, pair.secondary)
    assert s3b.head_object(Bucket="backup", Key="big.tar")["ETag"].strip('"') == big
    s3b.put_object(Bucket="backup", Key="after-failover", Body=b"written on the new primary")
    s3b.delete_object(Bucket="backup", Key="small/000/obj-000000")
    s3b.create_bucket(Bucket="born-on-b")
    s3b.delete_bucket(Bucket="doomed")

    # Failback: the old primary comes back, steps down, and gets the record's names plus what
    # was written since; both sites then hold the same objects with the same etags.
    pair.restart(pair.primary)
    pair.wait_role(pair.primary, "secondary", timeout_s=30)
    same = wait_same(pair, pair.secondary, pair.primary)
    assert same["backup/after-failover"]
    pair.wait_for("the same buckets on both sites",
                  lambda: bucket_dirs(pair.primary) == bucket_dirs(pair.secondary) == {"backup", "born-on-b"})
    assert "backup/small/000/obj-000000" not in same
    assert verify_objects(pair, pair.secondary) == []
    answer = pair.cli("objects", "verify", "--config", pair.secondary.config_path)
    assert "same objects with the same ETags" in answer.stdout

    # And back: a planned switchover makes the original primary serve its (identical) objects.
    pair.demote(pair.secondary)
    pair.wait_role(pair.secondary, "secondary")
    pair.promote(pair.primary)
    pair.wait_role(pair.primary, "primary")
    s3a = client(ports, pair.primary)
    assert s3a.get_object(Bucket="backup", Key="after-failover")["Body"].read() == b"written on the new primary"
    s3a.put_object(Bucket="backup", Key="after-failback", Body=b"home again")
    back = wait_same(pair, pair.primary, pair.secondary)
    assert back == {**same, "backup/after-failback": back["backup/after-failback"]}


def test_aws_cli_uploads_in_sync_mode_are_on_the_secondary_when_acknowledged(
        make_pair: MakePair, tmp_path: Path) -> None:
    """Sync mode: an answered PUT is on the secondary's disk, so no waiting before looking."""
    pair, ports = objects_pair(make_pair, tmp_path, "sync")
    env = client_env(tmp_path)
    aws = [str(Path(sys.executable).with_name("aws")), "--endpoint-url",
           f"http://127.0.0.1:{ports['primary']}"]
    upload = tmp_path / "upload"
    upload.mkdir()
    for i in range(12):
        (upload / f"frame-{i:04d}.bin").write_bytes(os.urandom(1000 + i))
    (upload / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart through the CLI
    for argv in (["s3", "mb", "s3://cli"], ["s3", "cp", "--recursive", "--only-show-errors",
                                            str(upload), "s3://cli/up/"]):
        result = subprocess.run([*aws, *argv], env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr
    on_primary, on_secondary = listing(pair.primary), listing(pair.secondary)
    assert len(on_primary) == 13 and on_secondary == on_primary
    assert on_primary["cli/up/big.bin"].endswith("-3")  # 8 MiB parts: the completed upload's etag


def test_changes_while_the_link_is_cut_are_kept_as_may_differ_and_copied_on_reconnect(
        make_pair: MakePair, tmp_path: Path) -> None:
    pair, ports = objects_pair(make_pair, tmp_path, "lookahead", via_proxy=True)
    s3 = client(ports, pair.primary)
    s3.create_bucket(Bucket="cut")
    for i in range(5):
        s3.put_object(Bucket="cut", Key=f"before-{i}", Body=b"x" * 100)
    wait_same(pair, pair.primary, pair.secondary)
    pair.cut_link()
    pair.wait_for("the object link down",
                  lambda: pair.status(pair.primary)["objects"]["link"] == "disconnected")
    for i in range(4):
        s3.put_object(Bucket="cut", Key=f"during-{i}", Body=os.urandom(3000))
    s3.delete_object(Bucket="cut", Key="before-0")
    s3.put_object(Bucket="cut", Key="before-1", Body=b"changed while cut")
    assert pair.status(pair.primary)["objects"]["may_differ"] == 6
    assert "cut/during-0" in json.loads((pair.primary.meta_path / "objects-may-differ.json").read_text())
    assert listing(pair.secondary) != listing(pair.primary)
    pair.restore_link()
    same = wait_same(pair, pair.primary, pair.secondary)
    assert "cut/before-0" not in same and len(same) == 8
    pair.wait_for("nothing left that may differ",
                  lambda: pair.status(pair.primary)["objects"]["may_differ"] == 0)


def bucket_dirs(site: Site) -> set[str]:
    root = site.meta_path / "objects" / "buckets"
    return set(os.listdir(root)) if root.exists() else set()


def test_buckets_created_and_deleted_while_the_link_is_cut_reach_the_secondary(
        make_pair: MakePair, tmp_path: Path) -> None:
    """A bucket created or deleted while the link is down is marked may-differ like a name, and
    copied at reconnect: a failback (the same path) loses neither (issue 18)."""
    pair, ports = objects_pair(make_pair, tmp_path, "lookahead", via_proxy=True)
    s3 = client(ports, pair.primary)
    for bucket in ("keep", "gone", "emptied"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="emptied", Key="dir/last", Body=b"deleted while cut")
    wait_same(pair, pair.primary, pair.secondary)
    pair.wait_for("the buckets on the secondary",
                  lambda: bucket_dirs(pair.secondary) == {"keep", "gone", "emptied"})
    pair.cut_link()
    pair.wait_for("the object link down",
                  lambda: pair.status(pair.primary)["objects"]["link"] == "disconnected")
    s3.create_bucket(Bucket="made-while-cut")  # empty: no object carries it across
    s3.delete_bucket(Bucket="gone")
    s3.delete_object(Bucket="emptied", Key="dir/last")
    s3.delete_bucket(Bucket="emptied")
    may_differ = json.loads((pair.primary.meta_path / "objects-may-differ.json").read_text())
    assert {"made-while-cut", "gone", "emptied", "emptied/dir/last"} <= set(may_differ)
    pair.restore_link()
    pair.wait_for("the same buckets on both sites",
                  lambda: bucket_dirs(pair.secondary) == {"keep", "made-while-cut"})
    assert listing(pair.secondary) == listing(pair.primary) == {}
    pair.wait_for("nothing left that may differ",
                  lambda: pair.status(pair.primary)["objects"]["may_differ"] == 0)
    # With the link up, a bucket op is answered once the secondary has it.
    s3.create_bucket(Bucket="with-link")
    assert "with-link" in bucket_dirs(pair.secondary)
