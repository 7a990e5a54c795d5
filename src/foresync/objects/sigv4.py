"""AWS Signature Version 4 for S3, checked on every request (header authentication).

A request carries ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/s3/aws4_request,
SignedHeaders=a;b;c, Signature=HEX``, ``x-amz-date`` and ``x-amz-content-sha256``. We rebuild
the *canonical request* from what arrived (method, the path re-encoded the way S3 encodes it,
the query sorted and encoded, the signed headers trimmed and lower-cased, the payload hash as
declared), hash it into the *string to sign*, derive the signing key from the secret of AKID and
compare signatures in constant time (AWS "Signature Version 4 signing process"; "Authenticating
Requests: Using the Authorization Header" in the S3 API reference).

The payload hash is whatever the client declared: a hex SHA-256 (the adapter checks the body
against it once read: ``XAmzContentSHA256Mismatch``), ``UNSIGNED-PAYLOAD``, or one of the
``STREAMING-*`` values, whose body is aws-chunked and checked chunk by chunk (``chunked.py``,
seeded with this request's signature). Time comes in as ``now`` (epoch seconds); a request dated
more than 15 minutes off is ``RequestTimeTooSkewed``, as in S3, which bounds replays.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from foresync.objects.s3errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = {STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SKEW_MAX_S = 15 * 60
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)"
    r"\s*,\s*Signature=(?P<sig>[0-9a-f]{64})\s*$")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class Verified:
    """What a request that passed has committed to: its payload rule and chunk-signing seed."""

    access_key: str
    payload_hash: str  # hex, UNSIGNED-PAYLOAD or a STREAMING-* value
    amz_date: str
    scope: str
    signing_key: bytes
    signature: str


def parse_authorization(header: str | None) -> Authorization:
    if not header:
        raise S3Error("AccessDenied", "the request is not signed (anonymous access is refused)")
    match = _AUTH_RE.match(header.strip())
    if match is None:
        raise S3Error("AuthorizationHeaderMalformed",
                      "the Authorization header is not AWS4-HMAC-SHA256 with Credential, "
                      "SignedHeaders and Signature")
    parts = match.group("cred").split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not re.match(r"^\d{8}$", parts[1]):
        raise S3Error("AuthorizationHeaderMalformed", "the Credential is not AKID/DATE/REGION/s3/aws4_request")
    signed = tuple(match.group("signed").split(";"))
    if "host" not in signed:
        raise S3Error("AuthorizationHeaderMalformed", "SignedHeaders must include host")
    return Authorization(parts[0], parts[1], parts[2], parts[3], signed, match.group("sig"))


def uri_encode(text: str, keep_slash: bool) -> str:
    """S3's URI encoding: every byte but A-Z a-z 0-9 - . _ ~ as %XX (upper-case hex)."""
    return quote(text, safe="/~" if keep_slash else "~")


def canonical_query(raw_query: str) -> str:
    pairs = []
    for item in raw_query.split("&") if raw_query else []:
        name, _, value = item.partition("=")
        pairs.append((uri_encode(unquote(name), False), uri_encode(unquote(value), False)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_request(method: str, raw_path: str, raw_query: str,
                      headers: Mapping[str, str], signed: tuple[str, ...], payload_hash: str) -> str:
    """``headers`` maps lower-case names to values (several values already joined by ',')."""
    lines = []
    for name in signed:
        if name not in headers:
            raise S3Error("AccessDenied", f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{_SPACES.sub(' ', headers[name].strip())}\n")
    path = uri_encode(unquote(raw_path), True) or "/"
    return "\n".join([method, path, canonical_query(raw_query), "".join(lines), ";".join(signed),
                      payload_hash])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def amz_epoch_s(amz_date: str) -> float:
    try:
        return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise S3Error("AccessDenied", f"x-amz-date {amz_date!r} is not YYYYMMDDTHHMMSSZ") from None


def verify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
           secrets: Mapping[str, str], now: float) -> Verified:
    """Check one request's signature; raise the S3 error a client expects when it is wrong."""
    auth = parse_authorization(headers.get("authorization"))
    secret = secrets.get(auth.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "the access key ID is not in the credentials file")
    amz_date = headers.get("x-amz-date", "")
    if not amz_date:
        raise S3Error("AccessDenied", "x-amz-date is missing")
    if abs(now - amz_epoch_s(amz_date)) > SKEW_MAX_S:
        raise S3Error("RequestTimeTooSkewed", "the request time is more than 15 minutes from ours")
    if amz_date[:8] != auth.date or auth.service != "s3":
        raise S3Error("AuthorizationHeaderMalformed", "the credential scope does not match x-amz-date and s3")
    payload = headers.get("x-amz-content-sha256", "")
    if payload not in STREAMING and payload != UNSIGNED_PAYLOAD and not _HEX64.match(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 is missing or not a SHA-256, "
                      "UNSIGNED-PAYLOAD or STREAMING-* value")
    canonical = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers, payload)
    key = signing_key(secret, auth.date, auth.region, auth.service)
    expected = sign(key, string_to_sign(amz_date, auth.scope, canonical))
    if not hmac.compare_digest(expected, auth.signature):
        raise S3Error("SignatureDoesNotMatch",
                      "the request signature we calculated does not match the signature you "
                      "provided; check your secret access key and signing method")
    return Verified(auth.access_key, payload, amz_date, auth.scope, key, auth.signature)


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """The credentials file: one ``ACCESS_KEY_ID SECRET`` pair a line; ``#`` comments and blank
    lines ignored. Returns {access key: secret}; a malformed line is a ValueError naming it."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) != 2:
            raise ValueError(f"{source} line {number}: expected 'ACCESS_KEY_ID SECRET'")
        if fields[0] in found:
            raise ValueError(f"{source} line {number}: access key {fields[0]} appears twice")
        found[fields[0]] = fields[1]
    if not found:
        raise ValueError(f"{source}: no credentials (lines 'ACCESS_KEY_ID SECRET')")
    return found
