"""objects/ranges.py: RFC 9110 single byte ranges as S3 serves them."""

from __future__ import annotations

import pytest

from foresync.objects.ranges import content_range, parse_range
from foresync.objects.s3errors import S3Error


@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)),
    ("bytes=90-200", (90, 99)), ("bytes=-500", (0, 99)), ("bytes=0-1,5-6", None),
    ("items=0-1", None), ("bytes=9-3", None), ("bytes=-", None),
])
def test_ranges(header: str | None, span: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges_are_invalid_range(header: str) -> None:
    with pytest.raises(S3Error) as exc:
        parse_range(header, 100)
    assert exc.value.code == "InvalidRange" and exc.value.status == 416


def test_content_range() -> None:
    assert content_range((0, 9), 100) == "bytes 0-9/100"
