"""S3's XML documents: the ones we send, and the two we parse (CompleteMultipartUpload,
CreateBucketConfiguration is read only to accept it).

Rendering goes through ``xml.etree.ElementTree`` so every key, prefix and message is escaped;
with ``encoding-type=url`` (which the aws CLI asks for) keys and prefixes are URL-encoded too,
as S3 does, so keys holding characters XML 1.0 cannot carry still list correctly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from foresync.objects.s3errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
PARSE_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    """One object as a listing shows it."""

    key: str
    mtime: float
    etag: str  # with its quotes
    size: int


def iso8601(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(epoch_s * 1000) % 1000:03d}Z"


def http_date(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _doc(root: ET.Element) -> bytes:
    return DECLARATION + bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))


def _add(parent: ET.Element, tag: str, text: object) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = str(text).lower() if isinstance(text, bool) else str(text)
    return child


def error(code: str, message: str, resource: str, request_id: str) -> bytes:
    root = ET.Element("Error")
    _add(root, "Code", code)
    _add(root, "Message", message)
    _add(root, "Resource", resource)
    _add(root, "RequestId", request_id)
    return _doc(root)


def list_buckets(owner: str, buckets: Iterable[tuple[str, float]]) -> bytes:
    root = ET.Element("ListAllMyBucketsResult", xmlns=NS)
    who = ET.SubElement(root, "Owner")
    _add(who, "ID", owner)
    _add(who, "DisplayName", owner)
    into = ET.SubElement(root, "Buckets")
    for name, created in buckets:
        bucket = ET.SubElement(into, "Bucket")
        _add(bucket, "Name", name)
        _add(bucket, "CreationDate", iso8601(created))
    return _doc(root)


def location() -> bytes:
    return _doc(ET.Element("LocationConstraint", xmlns=NS))


def versioning() -> bytes:
    return _doc(ET.Element("VersioningConfiguration", xmlns=NS))


@dataclass(frozen=True, slots=True)
class ListingDoc:
    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    url_encode: bool
    v2: bool
    marker: str = ""  # V1 Marker, or V2 ContinuationToken as received
    start_after: str = ""


def list_objects(doc: ListingDoc, entries: Sequence[Entry], prefixes: Sequence[str],
                 truncated: bool, next_marker: str | None) -> bytes:
    """ListBucketResult for V1 (``NextMarker``) or V2 (``NextContinuationToken``, already an
    opaque token in ``next_marker``)."""
    enc = (lambda s: quote(s, safe="/")) if doc.url_encode else (lambda s: s)
    root = ET.Element("ListBucketResult", xmlns=NS)
    _add(root, "Name", doc.bucket)
    _add(root, "Prefix", enc(doc.prefix))
    if doc.delimiter:
        _add(root, "Delimiter", enc(doc.delimiter))
    _add(root, "MaxKeys", doc.max_keys)
    if doc.url_encode:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", truncated)
    if doc.v2:
        _add(root, "KeyCount", len(entries) + len(prefixes))
        if doc.marker:
            _add(root, "ContinuationToken", doc.marker)
        if doc.start_after:
            _add(root, "StartAfter", enc(doc.start_after))
        if truncated and next_marker is not None:
            _add(root, "NextContinuationToken", next_marker)
    else:
        _add(root, "Marker", enc(doc.marker))
        if truncated and next_marker is not None and doc.delimiter:
            _add(root, "NextMarker", enc(next_marker))
    for entry in entries:
        contents = ET.SubElement(root, "Contents")
        _add(contents, "Key", enc(entry.key))
        _add(contents, "LastModified", iso8601(entry.mtime))
        _add(contents, "ETag", entry.etag)
        _add(contents, "Size", entry.size)
        _add(contents, "StorageClass", "STANDARD")
    for prefix in prefixes:
        _add(ET.SubElement(root, "CommonPrefixes"), "Prefix", enc(prefix))
    return _doc(root)


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    root = ET.Element("InitiateMultipartUploadResult", xmlns=NS)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return _doc(root)


def complete_multipart(location_url: str, bucket: str, key: str, etag: str) -> bytes:
    root = ET.Element("CompleteMultipartUploadResult", xmlns=NS)
    _add(root, "Location", location_url)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", etag)
    return _doc(root)


def list_parts(bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, float, str, int]],
               marker: int, max_parts: int, truncated: bool) -> bytes:
    """``parts``: (number, mtime, etag, size)."""
    root = ET.Element("ListPartsResult", xmlns=NS)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    _add(root, "PartNumberMarker", marker)
    if parts:
        _add(root, "NextPartNumberMarker", parts[-1][0])
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", truncated)
    _add(root, "StorageClass", "STANDARD")
    for number, mtime, etag, size in parts:
        part = ET.SubElement(root, "Part")
        _add(part, "PartNumber", number)
        _add(part, "LastModified", iso8601(mtime))
        _add(part, "ETag", etag)
        _add(part, "Size", size)
    return _doc(root)


def copy_result(etag: str, mtime: float) -> bytes:
    root = ET.Element("CopyObjectResult", xmlns=NS)
    _add(root, "LastModified", iso8601(mtime))
    _add(root, "ETag", etag)
    return _doc(root)


def _parse(body: bytes) -> ET.Element:
    if len(body) > PARSE_MAX_BYTES:
        raise S3Error("MalformedXML", "the XML body is too large")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "DTDs and entities are refused")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML body is not well-formed") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_complete_multipart(body: bytes) -> list[tuple[int, str]]:
    """[(part number, etag without quotes)] in the order given."""
    root = _parse(body)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise S3Error("MalformedXML", "expected a CompleteMultipartUpload document")
    parts = []
    for part in root:
        if _local(part.tag) != "Part":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in part}
        try:
            number = int(fields["PartNumber"])
            etag = fields["ETag"].strip('"')
        except (KeyError, ValueError):
            raise S3Error("MalformedXML", "a Part needs PartNumber and ETag") from None
        parts.append((number, etag))
    if not parts:
        raise S3Error("MalformedXML", "CompleteMultipartUpload lists no parts")
    return parts


def check_create_bucket(body: bytes) -> None:
    """A CreateBucketConfiguration body (a LocationConstraint) is accepted and ignored."""
    if body.strip():
        root = _parse(body)
        if _local(root.tag) != "CreateBucketConfiguration":
            raise S3Error("MalformedXML", "expected a CreateBucketConfiguration document")


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects: ([keys], quiet)."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise S3Error("MalformedXML", "expected a Delete document")
    keys, quiet = [], False
    for child in root:
        if _local(child.tag) == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif _local(child.tag) == "Object":
            for field in child:
                if _local(field.tag) == "Key":
                    keys.append(field.text or "")
    if len(keys) > 1000:
        raise S3Error("MalformedXML", "DeleteObjects takes at most 1000 keys")
    return keys, quiet


def delete_result(deleted: Sequence[str], errors: Sequence[tuple[str, str, str]]) -> bytes:
    """``errors``: (key, code, message)."""
    root = ET.Element("DeleteResult", xmlns=NS)
    for key in deleted:
        _add(ET.SubElement(root, "Deleted"), "Key", key)
    for key, code, message in errors:
        err = ET.SubElement(root, "Error")
        _add(err, "Key", key)
        _add(err, "Code", code)
        _add(err, "Message", message)
    return _doc(root)
