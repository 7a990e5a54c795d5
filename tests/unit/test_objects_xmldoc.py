"""objects/xmldoc.py: documents parse back, escape what they carry, and hostile input is refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from foresync.objects import xmldoc
from foresync.objects.s3errors import S3Error

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def test_error_document_escapes_its_fields() -> None:
    root = ET.fromstring(xmldoc.error("NoSuchKey", "no <such> key & more", "/b/<k>", "RID"))
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("Message") == "no <such> key & more"
    assert root.findtext("Resource") == "/b/<k>"


def test_listing_v2_with_url_encoding() -> None:
    doc = xmldoc.ListingDoc("b", "p/", "/", 2, url_encode=True, v2=True)
    body = xmldoc.list_objects(doc, [xmldoc.Entry("p/a b", 0.0, '"e"', 3)], ["p/c&d/"], True, "TOKEN")
    root = ET.fromstring(body)
    assert root.findtext(f"{NS}Contents/{NS}Key") == "p/a%20b"
    assert root.findtext(f"{NS}CommonPrefixes/{NS}Prefix") == "p/c%26d/"
    assert root.findtext(f"{NS}NextContinuationToken") == "TOKEN"
    assert root.findtext(f"{NS}KeyCount") == "2" and root.findtext(f"{NS}IsTruncated") == "true"


def test_complete_multipart_parses_parts_in_order() -> None:
    body = (b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b'<Part><ETag>"aa"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>x</ChecksumCRC32></Part>'
            b'<Part><PartNumber>2</PartNumber><ETag>bb</ETag></Part></CompleteMultipartUpload>')
    assert xmldoc.parse_complete_multipart(body) == [(1, "aa"), (2, "bb")]


@pytest.mark.parametrize("body", [
    b"<CompleteMultipartUpload></CompleteMultipartUpload>", b"not xml",
    b"<Other><Part><PartNumber>1</PartNumber><ETag>a</ETag></Part></Other>",
    b'<!DOCTYPE x [<!ENTITY e "boom">]><CompleteMultipartUpload/>',
    b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>",
])
def test_bad_complete_documents_are_malformed_xml(body: bytes) -> None:
    with pytest.raises(S3Error) as exc:
        xmldoc.parse_complete_multipart(body)
    assert exc.value.code == "MalformedXML"


def test_delete_documents() -> None:
    keys, quiet = xmldoc.parse_delete(b"<Delete><Quiet>true</Quiet><Object><Key>a</Key></Object>"
                                      b"<Object><Key>b/c</Key></Object></Delete>")
    assert keys == ["a", "b/c"] and quiet
    root = ET.fromstring(xmldoc.delete_result(["a"], [("b", "InvalidArgument", "bad")]))
    assert root.findtext(f"{NS}Deleted/{NS}Key") == "a"
    assert root.findtext(f"{NS}Error/{NS}Code") == "InvalidArgument"
