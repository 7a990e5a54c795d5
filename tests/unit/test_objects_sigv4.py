"""objects/sigv4.py against the worked examples in AWS's S3 SigV4 documentation, and refusals."""

from __future__ import annotations

import pytest

from foresync.objects import sigv4
from foresync.objects.s3errors import S3Error

# "Example: GET Object" from the S3 API reference (Signature Version 4, header auth)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AKID = "AKIAIOSFODNN7EXAMPLE"
NOW = 1369353600.0  # 20130524T000000Z
GET_HEADERS = {
    "host": "examplebucket.s3.amazonaws.com",
    "range": "bytes=0-9",
    "x-amz-content-sha256": sigv4.EMPTY_SHA256,
    "x-amz-date": "20130524T000000Z",
    "authorization": (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
}


def test_the_aws_get_object_example_verifies() -> None:
    verified = sigv4.verify("GET", "/test.txt", "", GET_HEADERS, {AKID: SECRET}, NOW)
    assert verified.access_key == AKID
    assert verified.scope == "20130524/us-east-1/s3/aws4_request"


def test_a_wrong_secret_an_unknown_key_and_a_changed_request_are_refused() -> None:
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", GET_HEADERS, {AKID: SECRET + "x"}, NOW)
    assert exc.value.code == "SignatureDoesNotMatch" and exc.value.status == 403
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", GET_HEADERS, {"OTHER": SECRET}, NOW)
    assert exc.value.code == "InvalidAccessKeyId"
    for method, path, query, change in (("PUT", "/test.txt", "", {}), ("GET", "/test2.txt", "", {}),
                                        ("GET", "/test.txt", "acl", {}),
                                        ("GET", "/test.txt", "", {"range": "bytes=0-10"})):
        with pytest.raises(S3Error) as exc:
            sigv4.verify(method, path, query, {**GET_HEADERS, **change}, {AKID: SECRET}, NOW)
        assert exc.value.code == "SignatureDoesNotMatch"


def test_unsigned_skewed_and_malformed_requests() -> None:
    headers = {k: v for k, v in GET_HEADERS.items() if k != "authorization"}
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", headers, {AKID: SECRET}, NOW)
    assert exc.value.code == "AccessDenied"
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", GET_HEADERS, {AKID: SECRET}, NOW + 16 * 60)
    assert exc.value.code == "RequestTimeTooSkewed"
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", {**GET_HEADERS, "authorization": "AWS AKID:sig"},
                     {AKID: SECRET}, NOW)
    assert exc.value.code == "AuthorizationHeaderMalformed"
    with pytest.raises(S3Error) as exc:
        sigv4.verify("GET", "/test.txt", "", {**GET_HEADERS, "x-amz-content-sha256": "nope"},
                     {AKID: SECRET}, NOW)
    assert exc.value.code == "InvalidArgument"


def test_canonical_query_and_path_encoding() -> None:
    assert sigv4.canonical_query("prefix=a%2Fb&list-type=2&delimiter=%2F") == \
        "delimiter=%2F&list-type=2&prefix=a%2Fb"
    assert sigv4.canonical_query("uploads") == "uploads="
    assert sigv4.canonical_query("") == ""
    request = sigv4.canonical_request("GET", "/b/a%20b%2Bc~d", "", {"host": "h"}, ("host",), "UNSIGNED-PAYLOAD")
    assert request.splitlines()[1] == "/b/a%20b%2Bc~d"


def test_the_signing_key_matches_aws_documentation() -> None:
    key = sigv4.signing_key(SECRET, "20130524", "us-east-1", "s3")
    text = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request",
                                sigv4.canonical_request("GET", "/test.txt", "", GET_HEADERS,
                                                        ("host", "range", "x-amz-content-sha256",
                                                         "x-amz-date"), sigv4.EMPTY_SHA256))
    assert sigv4.sign(key, text) == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_credentials_file_format() -> None:
    assert sigv4.parse_credentials("# comment\n\nAK1 s1\n  AK2   s2  \n", "f") == {"AK1": "s1", "AK2": "s2"}
    for bad in ("AK1\n", "AK1 s1 extra\n", "AK1 s1\nAK1 s2\n", "# nothing\n"):
        with pytest.raises(ValueError):
            sigv4.parse_credentials(bad, "f")
