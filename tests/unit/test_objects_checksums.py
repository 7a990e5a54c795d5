"""objects/checksums.py: the x-amz-checksum-* values boto3 and the aws CLI send are checked."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from foresync.objects.checksums import BodyChecksums
from foresync.objects.s3errors import S3Error

BODY = b"hello world"
CRC32 = base64.b64encode(zlib.crc32(BODY).to_bytes(4, "big")).decode()
SHA256 = base64.b64encode(hashlib.sha256(BODY).digest()).decode()


def feed(headers: dict[str, str], trailers: dict[str, str], body: bytes = BODY) -> None:
    checksums = BodyChecksums(headers)
    for i in range(0, len(body), 3):
        checksums.update(body[i:i + 3])
    checksums.check(headers, trailers)


def test_header_and_trailer_checksums_that_match_pass() -> None:
    feed({"x-amz-checksum-crc32": CRC32, "x-amz-checksum-sha256": SHA256}, {})
    feed({"x-amz-trailer": "x-amz-checksum-crc32"}, {"x-amz-checksum-crc32": CRC32})
    feed({"x-amz-checksum-crc32c": "yZRlqg=="}, {})  # CRC32C("hello world") = c99465aa
    feed({"x-amz-checksum-crc64nvme": "AAAAAAAAAAA="}, {})  # not computed: accepted unchecked


@pytest.mark.parametrize(("headers", "trailers", "code"), [
    ({"x-amz-checksum-crc32": CRC32}, {}, None),
    ({"x-amz-checksum-crc32": "AAAAAA=="}, {}, "BadDigest"),
    ({"x-amz-trailer": "x-amz-checksum-crc32"}, {"x-amz-checksum-crc32": "AAAAAA=="}, "BadDigest"),
    ({"x-amz-trailer": "x-amz-checksum-sha1"}, {}, "InvalidRequest"),
    ({"x-amz-checksum-sha256": "!!"}, {}, "InvalidDigest"),
])
def test_mismatches_are_refused(headers: dict[str, str], trailers: dict[str, str], code: str | None) -> None:
    if code is None:
        feed(headers, trailers)
        return
    with pytest.raises(S3Error) as exc:
        feed(headers, trailers)
    assert exc.value.code == code
    with pytest.raises(S3Error):
        feed({"x-amz-checksum-crc32": CRC32}, {}, BODY + b"!")
