"""The additional checksums S3 clients send with a body (``x-amz-checksum-ALGORITHM``), checked.

boto3 and the aws CLI (since 2025) compute a CRC32 of every upload by default and send it either
as a header (plain bodies) or as a trailer after an aws-chunked body (over HTTPS). The value is
the base64 of the big-endian checksum. We check CRC32, CRC32C, SHA-1 and SHA-256 as the body
streams in and refuse a mismatch with ``BadDigest`` before anything is committed. CRC64NVME
(the newest default of some SDKs) is accepted unchecked: nothing in the standard library or our
dependencies computes it, and the SigV4 signature or TLS still covers the body.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Mapping

import google_crc32c

from foresync.objects.s3errors import S3Error

PREFIX = "x-amz-checksum-"


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _Crc32c:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = google_crc32c.extend(self.value, data)

    def digest(self) -> bytes:
        return int(self.value).to_bytes(4, "big")


class _Hash:
    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def _make(algorithm: str) -> _Crc32 | _Crc32c | _Hash | None:
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm in ("sha1", "sha256"):
        return _Hash(algorithm)
    return None


class BodyChecksums:
    """Every algorithm a request names (``x-amz-sdk-checksum-algorithm``, ``x-amz-trailer`` or a
    ``x-amz-checksum-*`` header), computed over the decoded body; ``check`` compares them with
    the values from the headers and the trailers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        names = {name[len(PREFIX):] for name in headers if name.startswith(PREFIX)
                 and name != "x-amz-checksum-type"}
        names |= {t.strip()[len(PREFIX):] for t in headers.get("x-amz-trailer", "").split(",")
                  if t.strip().startswith(PREFIX)}
        self._running = {n: c for n in sorted(names) if (c := _make(n)) is not None}

    def update(self, data: bytes) -> None:
        for running in self._running.values():
            running.update(data)

    def check(self, headers: Mapping[str, str], trailers: Mapping[str, str]) -> None:
        for name, running in self._running.items():
            declared = trailers.get(PREFIX + name) or headers.get(PREFIX + name)
            if declared is None:
                raise S3Error("InvalidRequest", f"{PREFIX}{name} was announced but not sent")
            try:
                wanted = base64.b64decode(declared, validate=True)
            except ValueError:
                raise S3Error("InvalidDigest", f"{PREFIX}{name} is not base64") from None
            if wanted != running.digest():
                raise S3Error("BadDigest", f"the body does not match {PREFIX}{name}")
