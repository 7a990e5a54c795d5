"""objects/s3.py in process (aiohttp test server, fixed clock): the signed aws-chunked upload no
common client sends over HTTP, skew, and refusals that must leave nothing stored."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from foresync.objects import sigv4
from foresync.objects.s3 import S3Frontend
from foresync.objects.store import Store

AKID, SECRET = "AKIDUNIT", "unit-secret"
NOW = 1764892800.0  # 2025-12-05T00:00:00Z
AMZ_DATE = "20251205T000000Z"
SCOPE = "20251205/us-east-1/s3/aws4_request"


def signed_headers(method: str, path: str, host: str, payload: str, extra: dict[str, str],
                   query: str = "") -> dict[str, str]:
    headers = {"host": host, "x-amz-date": AMZ_DATE, "x-amz-content-sha256": payload, **extra}
    names = tuple(sorted(headers))
    canonical = sigv4.canonical_request(method, path, query, headers, names, payload)
    key = sigv4.signing_key(SECRET, "20251205", "us-east-1", "s3")
    signature = sigv4.sign(key, sigv4.string_to_sign(AMZ_DATE, SCOPE, canonical))
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


def chunked_body(seed: str, chunks: list[bytes]) -> bytes:
    key = sigv4.signing_key(SECRET, "20251205", "us-east-1", "s3")
    out, previous = b"", seed
    for data in [*chunks, b""]:
        text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", AMZ_DATE, SCOPE, previous, sigv4.EMPTY_SHA256,
                          hashlib.sha256(data).hexdigest()])
        previous = sigv4.sign(key, text)
        out += f"{len(data):x};chunk-signature={previous}\r\n".encode() + data + b"\r\n"
    return out


async def scenario(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "objects"))
    store.create_bucket("unit")
    server = TestServer(S3Frontend(store, {AKID: SECRET}, clock=lambda: NOW).application())
    await server.start_server()
    host = f"{server.host}:{server.port}"
    base = f"http://{host}"
    try:
        async with aiohttp.ClientSession() as session:
            chunks = [b"a" * 70000, b"b" * 1000]
            body = sum(len(c) for c in chunks)
            headers = signed_headers("PUT", "/unit/chunked", host, sigv4.STREAMING_SIGNED,
                                     {"content-encoding": "aws-chunked",
                                      "x-amz-decoded-content-length": str(body)})
            seed = headers["authorization"].rsplit("Signature=", 1)[1]
            async with session.put(f"{base}/unit/chunked", headers=headers,
                                   data=chunked_body(seed, chunks)) as answer:
                assert answer.status == 200, await answer.text()
                assert answer.headers["ETag"] == f'"{hashlib.md5(b"".join(chunks)).hexdigest()}"'
            headers = signed_headers("PUT", "/unit/tampered", host, sigv4.STREAMING_SIGNED,
                                     {"content-encoding": "aws-chunked"})
            seed = headers["authorization"].rsplit("Signature=", 1)[1]
            tampered = chunked_body(seed, chunks).replace(b"b" * 1000, b"c" * 1000)
            async with session.put(f"{base}/unit/tampered", headers=headers, data=tampered) as answer:
                assert answer.status == 403
                assert b"<Code>SignatureDoesNotMatch</Code>" in await answer.read()
            wrong_hash = signed_headers("PUT", "/unit/hashed", host, hashlib.sha256(b"x").hexdigest(), {})
            async with session.put(f"{base}/unit/hashed", headers=wrong_hash, data=b"y") as answer:
                assert answer.status == 400
                assert b"XAmzContentSHA256Mismatch" in await answer.read()
            stale = signed_headers("GET", "/unit", host, sigv4.EMPTY_SHA256, {})
            stale["x-amz-date"] = "20251204T230000Z"
            async with session.get(f"{base}/unit", headers=stale) as answer:
                assert answer.status == 403
                assert b"RequestTimeTooSkewed" in await answer.read()
            traversal = signed_headers("PUT", "/unit/a/../../etc", host, sigv4.UNSIGNED_PAYLOAD, {})
            async with session.put(f"{base}/unit/a/%2E%2E/%2E%2E/etc", headers=traversal,
                                   data=b"x") as answer:
                assert answer.status in (400, 403)
        assert store.sorted_keys("unit") == ["chunked"]
    finally:
        await server.close()
        store.close()


def test_signed_chunked_upload_and_refusals(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
