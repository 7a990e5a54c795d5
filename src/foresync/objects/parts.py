"""Names of the parts of a multipart upload in the record of objects, and a completion's op.

Each uploaded part is mirrored as an op on a name of its own (issue 18's first prediction link,
"the other parts of the same multipart upload"): ``BUCKET NUL UPLOAD_ID NUL NNNNN`` (the part
number, five digits). No key can take it (objects/names.py refuses a NUL), it holds no ``/``, so
no prefix entry (objects/entries.py: ``bucket/dir/`` NUL) covers it and no directory is offered
for it, and it never ends in a NUL, so it is never taken for a prefix entry. It travels where
names do (the link's STR, the record journal, the may-differ JSON).

A CompleteMultipartUpload is then a small op on the object's name (``ObjectKind.COMPLETE``): its
metadata is ``completion_meta`` (the object's ObjectInfo JSON, the upload id and the chosen
parts with their ETags); the secondary assembles the object from its own durable parts, so the
ETag (MD5 of the part MD5s, then ``-N``) is the same on both sites by construction. Pure: no I/O.
"""

from __future__ import annotations

import json
import re

PART_MARK = "\x00"
_PART_RE = re.compile(r"^([^\x00/]+)\x00([0-9a-f]{32}|[^\x00/]+)\x00(\d{5})$")


def part_name(bucket: str, upload_id: str, number: int) -> str:
    """The record name of part ``number`` of upload ``upload_id`` in ``bucket``."""
    return f"{bucket}{PART_MARK}{upload_id}{PART_MARK}{number:05d}"


def parse_part_name(name: str) -> tuple[str, str, int] | None:
    """(bucket, upload id, part number) of a part's name, or None if ``name`` is not one."""
    match = _PART_RE.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def is_part_name(name: str) -> bool:
    return parse_part_name(name) is not None


def completion_meta(info_json: bytes, upload_id: str, chosen: list[tuple[int, str]]) -> bytes:
    """A COMPLETE op's metadata: the object's ObjectInfo JSON, the upload and its chosen parts."""
    return json.dumps({"info": json.loads(info_json), "upload_id": upload_id,
                       "parts": [[n, etag] for n, etag in chosen]}, sort_keys=True).encode("utf-8")


def parse_completion(meta: bytes) -> tuple[bytes, str, list[tuple[int, str]]]:
    """(ObjectInfo JSON, upload id, chosen parts) of a COMPLETE op's metadata."""
    doc = json.loads(meta)
    info = json.dumps(doc["info"], sort_keys=True).encode("utf-8")
    return info, str(doc["upload_id"]), [(int(n), str(e)) for n, e in doc["parts"]]


def completion_parts(bucket: str, upload_id: str, chosen: list[tuple[int, str]]) -> tuple[str, ...]:
    """The record names of a completion's chosen parts."""
    return tuple(part_name(bucket, upload_id, n) for n, _ in chosen)
