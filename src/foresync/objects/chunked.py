"""aws-chunked request bodies (``Content-Encoding: aws-chunked``), decoded incrementally.

boto3 and the aws CLI send a body in this framing when the payload hash is a ``STREAMING-*``
value (S3 API reference, "Signature Calculations for the Authorization Header: Transferring
Payload in Multiple Chunks")::

    chunk     = hex-size [";chunk-signature=" 64 hex] CRLF data CRLF
    last      = "0" [";chunk-signature=" 64 hex] CRLF
    trailers  = *( name ":" value CRLF )          (the -TRAILER variants)
                ["x-amz-trailer-signature:" 64 hex CRLF]
    end       = CRLF

With ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` every chunk is signed: its string to sign is
``AWS4-HMAC-SHA256-PAYLOAD``, the date, the scope, the previous signature (the request's own for
the first chunk), the SHA-256 of the empty string and the SHA-256 of the chunk's data, so a chunk
cannot be altered, dropped or reordered. The unsigned-trailer variant carries no chunk signatures
(TLS protects it, as for ``UNSIGNED-PAYLOAD``).

``ChunkDecoder.feed(bytes)`` returns the data it could decode; ``finished`` says the final chunk
and trailers arrived. Sizes are bounded (``CHUNK_MAX_BYTES``, ``LINE_MAX_BYTES``) so a hostile
body cannot make us buffer without limit.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from foresync.objects.s3errors import S3Error
from foresync.objects.sigv4 import EMPTY_SHA256, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, sign

CHUNK_MAX_BYTES = 64 * 1024 * 1024
LINE_MAX_BYTES = 4096
_HEADER_RE = re.compile(rb"^([0-9a-fA-F]{1,16})(?:;chunk-signature=([0-9a-f]{64}))?$")


class ChunkDecoder:
    def __init__(self, payload: str, amz_date: str = "", scope: str = "", key: bytes = b"",
                 seed_signature: str = "") -> None:
        self._signed = payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._amz_date, self._scope, self._key = amz_date, scope, key
        self._previous = seed_signature
        self._buffer = bytearray()
        self._need = -1  # bytes of chunk data still to come; -1 while reading a size line
        self._chunk = bytearray()
        self._chunk_signature = ""
        self._in_trailers = False
        self.finished = False
        self.trailers: dict[str, str] = {}
        self.decoded_bytes = 0

    def feed(self, data: bytes) -> bytes:
        if self.finished and data:
            raise S3Error("IncompleteBody", "data after the final aws-chunked chunk")
        self._buffer += data
        out = bytearray()
        while not self.finished:
            if self._need < 0:
                line = self._line()
                if line is None:
                    break
                if self._in_trailers:
                    self._trailer(line)
                else:
                    self._start_chunk(line)
            elif self._need > 0:
                take = min(self._need, len(self._buffer))
                if take == 0:
                    break
                self._chunk += self._buffer[:take]
                del self._buffer[:take]
                self._need -= take
            else:
                if len(self._buffer) < 2:
                    break
                if bytes(self._buffer[:2]) != b"\r\n":
                    raise S3Error("IncompleteBody", "an aws-chunked chunk does not end in CRLF")
                del self._buffer[:2]
                out += self._end_chunk()
        return bytes(out)

    def _line(self) -> bytes | None:
        at = self._buffer.find(b"\r\n")
        if at < 0:
            if len(self._buffer) > LINE_MAX_BYTES:
                raise S3Error("IncompleteBody", "an aws-chunked header line is too long")
            return None
        line = bytes(self._buffer[:at])
        del self._buffer[:at + 2]
        return line

    def _start_chunk(self, line: bytes) -> None:
        match = _HEADER_RE.match(line)
        if match is None:
            raise S3Error("IncompleteBody", "an aws-chunked chunk header is malformed")
        size = int(match.group(1), 16)
        if size > CHUNK_MAX_BYTES:
            raise S3Error("EntityTooLarge", f"an aws-chunked chunk of {size} bytes is too large")
        if self._signed and match.group(2) is None:
            raise S3Error("SignatureDoesNotMatch", "an aws-chunked chunk has no chunk-signature")
        self._chunk_signature = (match.group(2) or b"").decode("ascii")
        self._chunk = bytearray()
        if size == 0:
            self._check_signature(b"")
            self._in_trailers = True
        else:
            self._need = size

    def _end_chunk(self) -> bytes:
        data = bytes(self._chunk)
        self._check_signature(data)
        self._need = -1
        self.decoded_bytes += len(data)
        return data

    def _check_signature(self, data: bytes) -> None:
        if not self._signed:
            return
        text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self._amz_date, self._scope, self._previous,
                          EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        expected = sign(self._key, text)
        if not hmac.compare_digest(expected, self._chunk_signature):
            raise S3Error("SignatureDoesNotMatch", "an aws-chunked chunk signature does not match")
        self._previous = expected

    def _trailer(self, line: bytes) -> None:
        if not line:
            self.finished = True
            return
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise S3Error("IncompleteBody", "an aws-chunked trailer is not NAME:VALUE")
        if len(self.trailers) >= 16:
            raise S3Error("IncompleteBody", "too many aws-chunked trailers")
        self.trailers[name.strip().lower()] = value.strip()

    def close(self) -> None:
        """The body ended: it must have ended after the final chunk (a missing last CRLF is
        tolerated), else the upload was cut short."""
        if not self.finished and self._in_trailers and self._need < 0 and not self._buffer:
            self.finished = True
        if not self.finished:
            raise S3Error("IncompleteBody", "the aws-chunked body ended before its final chunk")
