"""HTTP ``Range`` for GET (RFC 9110 section 14.2; S3 serves one range per request).

``parse_range`` turns the header and the object's size into the inclusive byte span to send, or
None for the whole object. A header that is not one ``bytes=`` range is ignored, as RFC 9110
says and as S3 does with several ranges; a well-formed range that starts past the end is
``InvalidRange`` (416).
"""

from __future__ import annotations

import re

from foresync.objects.s3errors import S3Error

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, clamped to the object, or None to send it whole."""
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first_text, last_text = match.groups()
    if not first_text:  # a suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0:
            raise S3Error("InvalidRange", "the requested range is not satisfiable")
        return (max(0, size - suffix), size - 1) if size else _unsatisfiable()
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        return _unsatisfiable()
    return first, min(last, size - 1)


def _unsatisfiable() -> tuple[int, int]:
    raise S3Error("InvalidRange", "the requested range is not satisfiable")


def content_range(span: tuple[int, int], size: int) -> str:
    return f"bytes {span[0]}-{span[1]}/{size}"
