"""Real S3 clients against a real ``foresync objects serve`` on loopback (issue 18, phase 1):
boto3, the aws CLI, s3cmd and rclone; bucket life cycle, a 104 MiB multipart upload in 8 MiB
parts, ranged reads, listing with delimiters, SigV4 refusals, TLS, and kill -9 during PUTs."""

from __future__ import annotations

import hashlib
import http.client
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .certs import make_tls_dir
from .objects_server import (
    ACCESS_KEY,
    SECRET,
    ObjectServer,
    boto3_client,
    client_env,
    start_object_server,
)
from .sites import TOOL_TIMEOUT_S, require_tool

MiB = 1024 * 1024
pytestmark = pytest.mark.integration


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[ObjectServer]:
    server = start_object_server(tmp_path, tmp_path / "store")
    yield server
    status = server.stop()
    assert status == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code"))


def run(argv: list[str], env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    require_tool(argv[0])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                            check=False, stdin=subprocess.DEVNULL)
    if ok:
        assert result.returncode == 0, f"$ {' '.join(argv)}\n{result.stdout}\n{result.stderr}"
    return result


def test_boto3_bucket_life_cycle_objects_ranges_copy_and_errors(s3: ObjectServer) -> None:
    from botocore.exceptions import ClientError

    c = boto3_client(s3.url)
    c.create_bucket(Bucket="life")
    with pytest.raises(ClientError) as exc:
        c.create_bucket(Bucket="life")
    assert error_code(exc.value) == "BucketAlreadyOwnedByYou"
    assert [b["Name"] for b in c.list_buckets()["Buckets"]] == ["life"]
    body = bytes(range(256)) * 40
    put = c.put_object(Bucket="life", Key="docs/a b+c.bin", Body=body, ContentType="app/x",
                       Metadata={"colour": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    head = c.head_object(Bucket="life", Key="docs/a b+c.bin")
    assert (head["ContentLength"], head["ContentType"], head["Metadata"]) == (len(body), "app/x",
                                                                             {"colour": "blue"})
    ranged = c.get_object(Bucket="life", Key="docs/a b+c.bin", Range="bytes=1000-1999")
    assert ranged["Body"].read() == body[1000:2000]
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert c.get_object(Bucket="life", Key="docs/a b+c.bin", Range="bytes=-10")["Body"].read() == body[-10:]
    with pytest.raises(ClientError) as exc:
        c.get_object(Bucket="life", Key="docs/a b+c.bin", Range=f"bytes={len(body)}-")
    assert error_code(exc.value) == "InvalidRange"
    c.copy_object(Bucket="life", Key="copy", CopySource={"Bucket": "life", "Key": "docs/a b+c.bin"})
    copied = c.get_object(Bucket="life", Key="copy")
    assert copied["Body"].read() == body and copied["Metadata"] == {"colour": "blue"}
    c.copy_object(Bucket="life", Key="copy2", CopySource="life/copy", MetadataDirective="REPLACE",
                  Metadata={"k": "v"}, ContentType="text/plain")
    assert c.head_object(Bucket="life", Key="copy2")["Metadata"] == {"k": "v"}
    with pytest.raises(ClientError) as exc:
        c.get_object(Bucket="life", Key="missing")
    assert error_code(exc.value) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        c.put_object(Bucket="nobucket", Key="k", Body=b"x")
    assert error_code(exc.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        c.put_object(Bucket="life", Key="../escape", Body=b"x")
    assert error_code(exc.value) == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        c.delete_bucket(Bucket="life")
    assert error_code(exc.value) == "BucketNotEmpty"
    for key in ("docs/a b+c.bin", "copy", "copy2"):
        c.delete_object(Bucket="life", Key=key)
    c.delete_bucket(Bucket="life")
    assert c.list_buckets()["Buckets"] == []
    assert not any(s3.store_dir.joinpath("tmp").iterdir()), "temporary files left behind"


def test_boto3_listing_with_delimiter_prefix_and_continuation(s3: ObjectServer) -> None:
    c = boto3_client(s3.url)
    c.create_bucket(Bucket="lists")
    keys = [f"logs/2026/{d:02d}/part-{i}" for d in range(1, 4) for i in range(3)]
    keys += ["logs/top", "other/x", "root.txt"]
    for key in keys:
        c.put_object(Bucket="lists", Key=key, Body=key.encode())
    top = c.list_objects_v2(Bucket="lists", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["logs/", "other/"]
    assert [o["Key"] for o in top["Contents"]] == ["root.txt"]
    year = c.list_objects_v2(Bucket="lists", Prefix="logs/2026/", Delimiter="/")
    assert [p["Prefix"] for p in year["CommonPrefixes"]] == [f"logs/2026/{d:02d}/" for d in (1, 2, 3)]
    seen, token, pages = [], None, 0
    while True:
        kwargs: dict[str, Any] = {"Bucket": "lists", "MaxKeys": 4}
        if token:
            kwargs["ContinuationToken"] = token
        page = c.list_objects_v2(**kwargs)
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys) and pages == 3
    paginated = c.get_paginator("list_objects_v2").paginate(Bucket="lists", Delimiter="/",
                                                             Prefix="logs/", PaginationConfig={"PageSize": 1})
    prefixes = [p["Prefix"] for page in paginated for p in page.get("CommonPrefixes", [])]
    assert prefixes == ["logs/2026/"]
    v1 = c.list_objects(Bucket="lists", Prefix="logs/2026/01/")
    assert [o["Key"] for o in v1["Contents"]] == [f"logs/2026/01/part-{i}" for i in range(3)]


def test_boto3_multipart_104_mib_in_8_mib_parts_and_part_errors(s3: ObjectServer, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    c = boto3_client(s3.url)
    c.create_bucket(Bucket="backup")
    source = tmp_path / "big.bin"
    with source.open("wb") as f:  # mostly sparse, a distinct marker per MiB
        for mib in range(104):
            f.seek(mib * MiB)
            f.write(mib.to_bytes(4, "big") * 1024)
        f.truncate(104 * MiB)
    config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    c.upload_file(str(source), "backup", "nightly/db.dump", Config=config)
    data = source.read_bytes()
    part_md5s = b"".join(hashlib.md5(data[i:i + 8 * MiB]).digest() for i in range(0, len(data), 8 * MiB))
    head = c.head_object(Bucket="backup", Key="nightly/db.dump")
    assert head["ETag"] == f'"{hashlib.md5(part_md5s).hexdigest()}-13"'
    assert head["ContentLength"] == 104 * MiB
    got = c.get_object(Bucket="backup", Key="nightly/db.dump", Range=f"bytes={50 * MiB}-{51 * MiB - 1}")
    assert got["Body"].read() == data[50 * MiB:51 * MiB]
    whole = hashlib.md5()
    for chunk in c.get_object(Bucket="backup", Key="nightly/db.dump")["Body"].iter_chunks(4 * MiB):
        whole.update(chunk)
    assert whole.digest() == hashlib.md5(data).digest()
    # by hand: list parts, a too-small middle part, an unknown part, abort
    upload = c.create_multipart_upload(Bucket="backup", Key="small")["UploadId"]
    e1 = c.upload_part(Bucket="backup", Key="small", UploadId=upload, PartNumber=1, Body=b"a" * 100)["ETag"]
    e2 = c.upload_part(Bucket="backup", Key="small", UploadId=upload, PartNumber=2, Body=b"b" * 100)["ETag"]
    assert [p["PartNumber"] for p in c.list_parts(Bucket="backup", Key="small", UploadId=upload)["Parts"]] == [1, 2]
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(Bucket="backup", Key="small", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert error_code(exc.value) == "EntityTooSmall"
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(Bucket="backup", Key="small", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 3, "ETag": e1}]})
    assert error_code(exc.value) == "InvalidPart"
    c.complete_multipart_upload(Bucket="backup", Key="small", UploadId=upload,
                                MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}]})
    assert c.get_object(Bucket="backup", Key="small")["Body"].read() == b"b" * 100
    upload = c.create_multipart_upload(Bucket="backup", Key="gone")["UploadId"]
    c.abort_multipart_upload(Bucket="backup", Key="gone", UploadId=upload)
    with pytest.raises(ClientError) as exc:
        c.list_parts(Bucket="backup", Key="gone", UploadId=upload)
    assert error_code(exc.value) == "NoSuchUpload"


def test_sigv4_refuses_a_wrong_secret_and_an_unknown_key(s3: ObjectServer) -> None:
    from botocore.exceptions import ClientError

    boto3_client(s3.url).create_bucket(Bucket="guarded")
    with pytest.raises(ClientError) as exc:
        boto3_client(s3.url, secret="not-the-secret").put_object(Bucket="guarded", Key="k", Body=b"x")
    assert error_code(exc.value) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as exc:
        boto3_client(s3.url, access_key="AKIDUNKNOWN").list_objects_v2(Bucket="guarded")
    assert error_code(exc.value) == "InvalidAccessKeyId"
    anonymous = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=10)
    anonymous.request("GET", "/guarded")
    answer = anonymous.getresponse()
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.read()
    assert boto3_client(s3.url).list_objects_v2(Bucket="guarded")["KeyCount"] == 0


def test_aws_cli_s3cmd_and_rclone(s3: ObjectServer, tmp_path: Path) -> None:
    env = client_env(tmp_path)
    aws = [str(Path(sys.executable).with_name("aws")), "--endpoint-url", s3.url]
    payload = tmp_path / "payload.bin"
    payload.write_bytes(hashlib.sha256(b"seed").digest() * (24 * MiB // 32))  # 24 MiB: multipart
    run([*aws, "s3", "mb", "s3://clis"], env)
    run([*aws, "s3", "cp", "--only-show-errors", str(payload), "s3://clis/aws/payload.bin"], env)
    run([*aws, "s3", "cp", "--only-show-errors", "s3://clis/aws/payload.bin", str(tmp_path / "aws.out")], env)
    assert (tmp_path / "aws.out").read_bytes() == payload.read_bytes()
    listed = run([*aws, "s3", "ls", "s3://clis/"], env).stdout
    assert "PRE aws/" in listed
    ranged = run([*aws, "s3api", "get-object", "--bucket", "clis", "--key", "aws/payload.bin",
                  "--range", "bytes=5-14", str(tmp_path / "r.out")], env).stdout
    assert '"ContentRange": "bytes 5-14/' in ranged
    assert (tmp_path / "r.out").read_bytes() == payload.read_bytes()[5:15]
    bad = run([*aws, "s3", "ls", "s3://clis/"], {**env, "AWS_SECRET_ACCESS_KEY": "wrong"}, ok=False)
    assert bad.returncode != 0 and "SignatureDoesNotMatch" in bad.stderr

    cfg = tmp_path / "s3cfg"
    cfg.write_text(f"[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET}\n"
                   f"host_base = 127.0.0.1:{s3.port}\nhost_bucket = 127.0.0.1:{s3.port}\n"
                   "use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n")
    s3cmd = ["s3cmd", "-c", str(cfg)]
    run([*s3cmd, "put", str(payload), "s3://clis/s3cmd/payload.bin"], env)
    run([*s3cmd, "get", "--force", "s3://clis/s3cmd/payload.bin", str(tmp_path / "s3cmd.out")], env)
    assert (tmp_path / "s3cmd.out").read_bytes() == payload.read_bytes()
    assert "DIR  s3://clis/s3cmd/" in run([*s3cmd, "ls", "s3://clis/"], env).stdout

    rclone_env = {**env, "RCLONE_CONFIG_T_TYPE": "s3", "RCLONE_CONFIG_T_PROVIDER": "Other",
                  "RCLONE_CONFIG_T_ACCESS_KEY_ID": ACCESS_KEY,
                  "RCLONE_CONFIG_T_SECRET_ACCESS_KEY": SECRET,
                  "RCLONE_CONFIG_T_ENDPOINT": s3.url, "RCLONE_CONFIG_T_REGION": "us-east-1"}
    rclone = ["rclone", "--config", str(tmp_path / "rclone.conf")]
    run([*rclone, "copyto", str(payload), "t:clis/rclone/payload.bin", "--s3-chunk-size", "8M",
         "--s3-upload-cutoff", "5M"], rclone_env)
    ranged_cat = subprocess.run([*rclone, "cat", "t:clis/rclone/payload.bin", "--offset", "100",
                                 "--count", "16"], env=rclone_env, capture_output=True,
                                timeout=TOOL_TIMEOUT_S, check=True)
    assert ranged_cat.stdout == payload.read_bytes()[100:116]
    tree = run([*rclone, "lsf", "-R", "t:clis"], rclone_env).stdout.split()
    assert sorted(tree) == ["aws/", "aws/payload.bin", "rclone/", "rclone/payload.bin", "s3cmd/",
                            "s3cmd/payload.bin"]
    c = boto3_client(s3.url)
    etags = {c.head_object(Bucket="clis", Key=f"{who}/payload.bin")["ETag"] for who in ("aws", "rclone", "s3cmd")}
    assert all(e.endswith('-3"') or e.endswith('-2"') for e in etags), etags  # each went multipart
    run([*rclone, "purge", "t:clis"], rclone_env)
    assert c.list_buckets()["Buckets"] == []


def test_boto3_and_aws_cli_over_tls(tmp_path: Path) -> None:
    tls_dir = make_tls_dir(tmp_path / "tls", "objects-ca")
    server = start_object_server(tmp_path, tmp_path / "store", tls_dir=tls_dir, log_level="debug")
    try:
        c = boto3_client(server.url, verify=str(tls_dir / "ca-cert.pem"))
        c.create_bucket(Bucket="secure")
        body = b"over tls " * 100_000
        c.put_object(Bucket="secure", Key="k", Body=body)  # https: unsigned or chunked trailer
        assert c.get_object(Bucket="secure", Key="k")["Body"].read() == body
        env = client_env(tmp_path)
        aws = [str(Path(sys.executable).with_name("aws")), "--endpoint-url", server.url,
               "--ca-bundle", str(tls_dir / "ca-cert.pem")]
        src = tmp_path / "f.bin"
        src.write_bytes(b"z" * (9 * MiB))
        run([*aws, "s3", "cp", "--only-show-errors", str(src), "s3://secure/f.bin"], env)
        assert c.head_object(Bucket="secure", Key="f.bin")["ContentLength"] == 9 * MiB
        with pytest.raises(Exception):  # noqa: B017 - any TLS failure: the CA is not trusted
            boto3_client(server.url, verify=True).list_buckets()
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()
    # over https boto3 stops hashing bodies and sends them aws-chunked with a checksum trailer
    assert "PUT /secure/k? payload STREAMING-UNSIGNED" in server.log(), server.log()


def _signed_put(port: int, bucket: str, key: str, length: int) -> tuple[http.client.HTTPConnection, None]:
    """Open a PUT of ``length`` bytes with an UNSIGNED-PAYLOAD SigV4 signature (botocore's signer)
    and send its headers; the caller streams the body."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{port}/{bucket}/{key}"
    request = AWSRequest("PUT", url, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
                                              "Content-Length": str(length)})
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET), "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("PUT", f"/{bucket}/{key}", skip_accept_encoding=True)
    for name, value in request.headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn, None


def test_kill_9_during_a_put_leaves_the_old_object_or_the_new_never_a_torn_one(tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = start_object_server(tmp_path, store)
    c = boto3_client(server.url)
    c.create_bucket(Bucket="crash")
    old = b"old!" * (MiB // 4)
    c.put_object(Bucket="crash", Key="obj", Body=old)
    size = 16 * MiB
    conn, _ = _signed_put(server.port, "crash", "obj", size)
    conn.send(b"new!" * (4 * MiB // 4))  # a quarter of the new body, then the server dies
    server.stop(signal.SIGKILL)
    conn.close()
    # many whole PUTs of one key, the server killed while they run
    server = start_object_server(tmp_path, store, name="s3-2")
    c = boto3_client(server.url)
    assert c.get_object(Bucket="crash", Key="obj")["Body"].read() == old
    versions = {bytes([65 + v]) * (2 * MiB + v) for v in range(40)}
    stop = threading.Event()

    def writer() -> None:
        for body in sorted(versions):
            if stop.is_set():
                return
            try:
                c.put_object(Bucket="crash", Key="obj", Body=body)
            except Exception:  # the server died under us: expected
                return

    thread = threading.Thread(target=writer)
    thread.start()
    while not any(p.name.startswith("put-") for p in (store / "tmp").iterdir()) and thread.is_alive():
        time.sleep(0.001)
    server.stop(signal.SIGKILL)
    stop.set()
    thread.join(timeout=60)
    server = start_object_server(tmp_path, store, name="s3-3")
    try:
        c = boto3_client(server.url)
        got = c.get_object(Bucket="crash", Key="obj")
        body = got["Body"].read()
        assert body == old or body in versions, f"torn object: {len(body)} bytes"
        assert got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert [o["Key"] for o in c.list_objects_v2(Bucket="crash")["Contents"]] == ["obj"]
        assert not any((store / "tmp").iterdir()), "temporary files survived the restart"
    finally:
        assert server.stop() == 0, server.log()


def test_a_client_that_hangs_up_mid_body_leaves_no_object(s3: ObjectServer) -> None:
    c = boto3_client(s3.url)
    c.create_bucket(Bucket="cut")
    c.put_object(Bucket="cut", Key="obj", Body=b"old")
    conn, _ = _signed_put(s3.port, "cut", "obj", 8 * MiB)
    conn.send(b"x" * MiB)
    conn.close()
    conn, _ = _signed_put(s3.port, "cut", "new", 8 * MiB)
    conn.send(b"y" * MiB)
    conn.close()
    deadline = time.monotonic() + 10
    while any((s3.store_dir / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the hang-up and drops the temporary files
    assert not any((s3.store_dir / "tmp").iterdir())
    assert c.get_object(Bucket="cut", Key="obj")["Body"].read() == b"old"
    assert [o["Key"] for o in c.list_objects_v2(Bucket="cut")["Contents"]] == ["obj"]
