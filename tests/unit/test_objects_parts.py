"""objects/parts.py: a part's record name is one no key can take and no prefix entry covers."""

from __future__ import annotations

import pytest

from foresync.objects.entries import covering_prefixes, is_prefix_entry
from foresync.objects.names import check_key
from foresync.objects.parts import (
    completion_meta,
    completion_parts,
    is_part_name,
    parse_completion,
    parse_part_name,
    part_name,
)
from foresync.objects.s3errors import S3Error

UPLOAD = "0123456789abcdef0123456789abcdef"


def test_a_part_name_round_trips_and_is_nothing_else() -> None:
    name = part_name("bkt", UPLOAD, 7)
    assert name == f"bkt\x00{UPLOAD}\x0000007"
    assert parse_part_name(name) == ("bkt", UPLOAD, 7)
    assert is_part_name(name) and not is_prefix_entry(name)
    assert covering_prefixes(name) == []  # no prefix entry can cover a part
    for other in ("bkt/key", "bkt", "bkt/dir/\x00", f"bkt/{UPLOAD}/00007", f"bkt\x00{UPLOAD}\x007"):
        assert parse_part_name(other) is None, other


def test_no_key_can_take_a_parts_name() -> None:
    with pytest.raises(S3Error):
        check_key(f"{UPLOAD}\x0000001")


def test_a_completion_carries_the_info_the_upload_and_the_chosen_parts() -> None:
    meta = completion_meta(b'{"etag": "e-2", "key": "k"}', UPLOAD, [(1, "aa"), (3, "bb")])
    info, upload, chosen = parse_completion(meta)
    assert info == b'{"etag": "e-2", "key": "k"}' and upload == UPLOAD
    assert chosen == [(1, "aa"), (3, "bb")]
    assert completion_parts("bkt", UPLOAD, chosen) == (part_name("bkt", UPLOAD, 1),
                                                       part_name("bkt", UPLOAD, 3))
