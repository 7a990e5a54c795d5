"""Entries of the record of objects (objects/entries.py): names and prefix entries."""

from __future__ import annotations

import pytest

from foresync.objects.entries import (
    covering_prefixes,
    covers,
    directory_of,
    entry_directory,
    is_prefix_entry,
    prefix_entry,
    shown,
)
from foresync.objects.names import check_key
from foresync.objects.s3errors import S3Error


def test_a_prefix_entry_is_its_directory_and_a_mark_no_key_may_hold() -> None:
    entry = prefix_entry("b/dir/")
    assert is_prefix_entry(entry) and entry_directory(entry) == "b/dir/" and shown(entry) == "b/dir/*"
    assert not is_prefix_entry("b/dir/") and shown("b/k") == "b/k"
    with pytest.raises(S3Error):
        check_key("dir/\x00")  # so no object name is ever taken for a prefix entry


def test_a_prefix_entry_covers_every_name_below_its_directory_and_nothing_else() -> None:
    entry = prefix_entry("b/dir/")
    assert covers(entry, "b/dir/x") and covers(entry, "b/dir/sub/y")
    assert covers(entry, prefix_entry("b/dir/sub/"))  # a deeper prefix entry
    assert not covers(entry, "b/dir") and not covers(entry, "b/dir2/x") and not covers(entry, entry)
    assert covers("b/k", "b/k") and not covers("b/k", "b/k2")


def test_directories_and_the_entries_that_could_cover_a_name() -> None:
    assert directory_of("b/a/b/c") == "b/a/b/" and directory_of("b/k") == "b/"
    assert covering_prefixes("b/a/b/c") == [prefix_entry("b/a/b/"), prefix_entry("b/a/"),
                                            prefix_entry("b/")]
    assert covering_prefixes("bucket") == []
