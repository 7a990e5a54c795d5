"""objects/listing.py: pages, delimiters and markers against a plain model (every page joined
must list each entry once, in order, whatever the page size)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foresync.objects import listing
from foresync.objects.s3errors import S3Error

KEYS = sorted(["a", "a/1", "a/2", "a/b/3", "b", "c/x", "c/y", "d/"])


def test_delimiter_rolls_keys_into_common_prefixes() -> None:
    page = listing.list_page(KEYS, delimiter="/")
    assert page.keys == ("a", "b") and page.common_prefixes == ("a/", "c/", "d/")
    assert not page.is_truncated
    page = listing.list_page(KEYS, prefix="a/", delimiter="/")
    assert page.keys == ("a/1", "a/2") and page.common_prefixes == ("a/b/",)


def test_a_page_ends_after_max_keys_and_resumes_after_a_common_prefix() -> None:
    page = listing.list_page(KEYS, delimiter="/", max_keys=2)
    assert page.keys == ("a",) and page.common_prefixes == ("a/",) and page.is_truncated
    assert page.next_marker == "a/"
    page = listing.list_page(KEYS, delimiter="/", marker="a/", max_keys=2)
    assert page.keys == ("b",) and page.common_prefixes == ("c/",)
    assert listing.list_page(KEYS, max_keys=0) == listing.Page((), (), False, None)


def model(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    entries: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        at = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key if at < 0 else key[:at + len(delimiter)]
        if entry not in entries:
            entries.append(entry)
    return entries


@given(st.lists(st.text(alphabet="ab/", min_size=1, max_size=5), unique=True, max_size=30),
       st.sampled_from(["", "a", "a/", "b"]), st.sampled_from(["", "/"]), st.integers(1, 5))
def test_pages_joined_equal_the_model(keys: list[str], prefix: str, delimiter: str, size: int) -> None:
    keys = sorted(keys)
    seen: list[str] = []
    marker = ""
    for _ in range(100):
        page = listing.list_page(keys, prefix, delimiter, marker, size)
        assert page.count <= size
        seen += sorted(page.keys + page.common_prefixes)
        if not page.is_truncated:
            break
        assert page.next_marker is not None
        marker = listing.decode_token(listing.encode_token(page.next_marker))
    assert seen == model(keys, prefix, delimiter)


def test_max_keys_and_tokens() -> None:
    assert listing.max_keys_of(None) == 1000 and listing.max_keys_of("5000") == 1000
    for bad in ("x", "-1"):
        with pytest.raises(S3Error):
            listing.max_keys_of(bad)
    with pytest.raises(S3Error):
        listing.decode_token("!!not base64")
