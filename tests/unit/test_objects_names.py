"""objects/names.py: keys that could escape a directory are refused, and a key's file name never
depends on its text beyond a hash."""

from __future__ import annotations

import pytest

from foresync.objects.names import check_bucket, check_key, key_file_name
from foresync.objects.s3errors import S3Error


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs/path", "a/./b", "..", "nul\x00byte",
                                 "", "x" * 1025, "tab\there"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(S3Error) as exc:
        check_key(key)
    assert exc.value.code in ("InvalidArgument", "KeyTooLongError")


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "dir/", "..hidden", "a..b", "ünï cödé+&=?.bin",
                                 "x" * 1024])
def test_ordinary_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_key_file_names_are_hex_hashes() -> None:
    name = key_file_name("../../etc/passwd")
    assert len(name) == 64 and all(c in "0123456789abcdef" for c in name)
    assert key_file_name("a") != key_file_name("b")


@pytest.mark.parametrize("bucket", ["ab", "Upper", "-start", "end-", "a..b", "192.168.1.1", "a_b",
                                    "x" * 64, "../x", "a.-b"])
def test_bad_bucket_names(bucket: str) -> None:
    with pytest.raises(S3Error) as exc:
        check_bucket(bucket)
    assert exc.value.code == "InvalidBucketName"


def test_good_bucket_names() -> None:
    for bucket in ("abc", "my-bucket.v2", "0backup9"):
        assert check_bucket(bucket) == bucket
