"""objects/chunked.py: aws-chunked bodies, fed whole, byte by byte and with trailing data, against
AWS's documented example (a 66560-byte object of 'a' in 64 KiB + 1 KiB chunks)."""

from __future__ import annotations

import pytest

from foresync.objects import sigv4
from foresync.objects.chunked import ChunkDecoder
from foresync.objects.s3errors import S3Error

KEY = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")
DATE, SCOPE = "20130524T000000Z", "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIGS = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]


def example_body() -> bytes:
    return (b"10000;chunk-signature=" + SIGS[0].encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
            + b"400;chunk-signature=" + SIGS[1].encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=" + SIGS[2].encode() + b"\r\n\r\n")


def decoder() -> ChunkDecoder:
    return ChunkDecoder(sigv4.STREAMING_SIGNED, DATE, SCOPE, KEY, SEED)


def test_the_aws_example_decodes_whole_and_byte_by_byte() -> None:
    d = decoder()
    assert d.feed(example_body()) == b"a" * 66560
    d.close()
    assert d.finished
    d = decoder()
    out = b"".join(d.feed(bytes([b])) for b in example_body())
    d.close()
    assert out == b"a" * 66560


def test_data_after_the_end_a_changed_chunk_and_a_cut_body_are_refused() -> None:
    d = decoder()
    d.feed(example_body())
    with pytest.raises(S3Error):
        d.feed(b"x")
    tampered = example_body().replace(b"a" * 1024, b"b" + b"a" * 1023)
    with pytest.raises(S3Error) as exc:
        decoder().feed(tampered)
    assert exc.value.code == "SignatureDoesNotMatch"
    d = decoder()
    d.feed(example_body()[:66000])
    with pytest.raises(S3Error) as exc:
        d.close()
    assert exc.value.code == "IncompleteBody"


def test_unsigned_chunks_with_a_checksum_trailer() -> None:
    d = ChunkDecoder(sigv4.STREAMING_UNSIGNED_TRAILER)
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    assert d.feed(body) == b"hello world"
    d.close()
    assert d.trailers == {"x-amz-checksum-crc32": "DUoRhQ=="}


def test_a_signed_body_must_carry_chunk_signatures() -> None:
    with pytest.raises(S3Error):
        decoder().feed(b"5\r\nhello\r\n")
    with pytest.raises(S3Error):
        ChunkDecoder(sigv4.STREAMING_UNSIGNED_TRAILER).feed(b"zz\r\n")
