"""The primary's copy of the record of objects (replication/object_copy.py): weights, coverage,
and what may be evicted alone."""

from __future__ import annotations

from foresync.objects.entries import prefix_entry
from foresync.replication.object_copy import RecordCopy

DIR = prefix_entry("b/d/")


def test_weights_sum_to_the_names_and_bytes_covered() -> None:
    copy = RecordCopy()
    copy.add("b/x", 1)
    copy.add(DIR, 2, (5, 100))
    assert (copy.names, copy.bytes, copy.prefixes, len(copy)) == (6, 103, 1, 2)
    copy.grow(DIR, 1, 10)
    assert copy.weight(DIR) == (6, 110) and copy.names == 7
    copy.remove(DIR)
    assert (copy.names, copy.bytes, copy.prefixes) == (1, 3, 0)


def test_a_name_is_covered_by_itself_first_then_the_deepest_prefix_entry() -> None:
    copy = RecordCopy()
    copy.add(prefix_entry("b/"), 1, (1, 10))
    copy.add(DIR, 2, (1, 10))
    copy.add("b/d/x", 3)
    assert copy.covering("b/d/x") == "b/d/x"
    assert copy.covering("b/d/y") == DIR and copy.covering("b/e") == prefix_entry("b/")
    assert copy.covering_prefix(DIR) == prefix_entry("b/")  # never itself
    assert copy.covering("c/k") is None


def test_an_exact_entry_under_a_prefix_entry_is_evicted_only_with_it() -> None:
    copy = RecordCopy()
    copy.add("b/old", 1)
    copy.add(DIR, 2, (2, 20))
    copy.add("b/d/full", 3)  # a name the prefix entry could not grow to take
    assert list(copy.groups()) == [("b/old", []), (DIR, ["b/d/full"])]
    assert copy.under(DIR) == ["b/d/full"] and copy.weight_under("b/d/") == (1, 8)


def test_touch_makes_an_entry_the_most_recent_and_set_seq_does_not() -> None:
    copy = RecordCopy()
    copy.add("b/a", 1)
    copy.add("b/b", 2)
    copy.set_seq("b/a", 5)
    assert list(copy) == ["b/a", "b/b"] and copy.seq("b/a") == 5
    copy.touch("b/a", 6)
    assert list(copy) == ["b/b", "b/a"]
    copy.add("b/b", 1)  # taken again: most recent, its seq never goes back
    assert list(copy) == ["b/a", "b/b"] and copy.seq("b/b") == 2
