"""Bucket and key names: which are accepted, and the file name a key is stored under.

Buckets follow S3's naming rules (3-63 characters of lower-case letters, digits, dots and
hyphens, starting and ending with a letter or digit, not shaped like an IP address), so a bucket
name is also a safe directory name. Keys are any UTF-8 of 1..1024 bytes except: a NUL or other
C0 control character, a leading ``/``, and a ``.`` or ``..`` path segment. S3 itself allows those,
but they are what path traversal is made of and no real workload needs them, so they are refused
with ``InvalidArgument`` before they reach the store. The store never uses a key as a path anyway:
a key's file is named by the SHA-256 of the key (``key_file_name``), so even a key that slipped
through could not name a file outside its bucket.
"""

from __future__ import annotations

import hashlib
import re

from foresync.objects.s3errors import S3Error

KEY_MAX_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def check_bucket(name: str) -> str:
    """``name`` if it is a valid bucket name, else ``InvalidBucketName``."""
    if (not _BUCKET_RE.match(name) or ".." in name or _IP_RE.match(name) or ".-" in name
            or "-." in name):
        raise S3Error("InvalidBucketName", f"invalid bucket name {name!r}", name)
    return name


def check_key(key: str) -> str:
    """``key`` if it is a key this store accepts, else ``InvalidArgument``/``KeyTooLongError``."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "object key is not valid UTF-8") from None
    if not raw:
        raise S3Error("InvalidArgument", "object key is empty")
    if len(raw) > KEY_MAX_BYTES:
        raise S3Error("KeyTooLongError", f"object key is {len(raw)} bytes, at most {KEY_MAX_BYTES}")
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise S3Error("InvalidArgument", "object key holds a control character (NUL included)")
    if key.startswith("/"):
        raise S3Error("InvalidArgument", "object key starts with '/'")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise S3Error("InvalidArgument", "object key has a '.' or '..' path segment")
    return key


def key_file_name(key: str) -> str:
    """The file name a key's object is stored under: hex SHA-256 of its UTF-8, never the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
