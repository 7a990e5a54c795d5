"""ListObjects (V1 and V2) over a bucket's sorted keys: prefix, delimiter, marker, max-keys.

Every entry a listing returns is either a key or, with a delimiter, a *common prefix* (the key up
to and including the first delimiter after ``prefix``), which stands for every key that rolls up
into it and counts once against ``max-keys``. A page ends after ``max_keys`` entries; the resume
point is the last entry returned (V1's NextMarker; V2's continuation token is that entry,
base64url-encoded so it is opaque and safe in a URL). Resuming skips every key whose *entry* is
at or before the marker, so a common prefix is never listed twice even though its keys sort after
it ("a/" < "a/b"). The keys come in sorted by UTF-8 code point, which for S3's UTF-8 byte order
is the same as Python's ``str`` order.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from foresync.objects.s3errors import S3Error

MAX_KEYS_LIMIT = 1000
_AFTER_ALL = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class Page:
    keys: tuple[str, ...]
    common_prefixes: tuple[str, ...]
    is_truncated: bool
    next_marker: str | None  # the last entry returned when truncated

    @property
    def count(self) -> int:
        return len(self.keys) + len(self.common_prefixes)


def list_page(sorted_keys: Sequence[str], prefix: str = "", delimiter: str = "",
              marker: str = "", max_keys: int = MAX_KEYS_LIMIT) -> Page:
    """One page of entries after ``marker`` (exclusive), at most ``max_keys`` of them."""
    keys: list[str] = []
    prefixes: list[str] = []
    last = ""
    if max_keys <= 0:
        return Page((), (), False, None)
    i = bisect.bisect_left(sorted_keys, prefix)
    if marker:
        i = max(i, bisect.bisect_right(sorted_keys, marker))
    while i < len(sorted_keys):
        key = sorted_keys[i]
        if not key.startswith(prefix):
            break
        entry = _roll_up(key, prefix, delimiter)
        if entry is not None and entry <= marker:  # a prefix already listed before the marker
            i = bisect.bisect_left(sorted_keys, entry + _AFTER_ALL, i)
            continue
        if len(keys) + len(prefixes) >= max_keys:
            return Page(tuple(keys), tuple(prefixes), True, last)
        if entry is None:
            keys.append(key)
            last = key
            i += 1
        else:
            prefixes.append(entry)
            last = entry
            i = bisect.bisect_left(sorted_keys, entry + _AFTER_ALL, i)
    return Page(tuple(keys), tuple(prefixes), False, None)


def _roll_up(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into, or None when it is listed as itself."""
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[:at + len(delimiter)]


def max_keys_of(text: str | None) -> int:
    if text is None:
        return MAX_KEYS_LIMIT
    try:
        value = int(text)
    except ValueError:
        raise S3Error("InvalidArgument", f"max-keys = {text!r}: not an integer") from None
    if value < 0:
        raise S3Error("InvalidArgument", f"max-keys = {value}: must not be negative")
    return min(value, MAX_KEYS_LIMIT)


def encode_token(entry: str) -> str:
    return base64.urlsafe_b64encode(entry.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise S3Error("InvalidArgument", "the continuation token is not one this server gave") from None
