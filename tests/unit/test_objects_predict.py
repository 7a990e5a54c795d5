"""objects/predict.py: each logical link predicts what it should, memory stays bounded, and two
predictors fed the same writes agree (the primary and the secondary must)."""

from __future__ import annotations

from foresync.objects import predict
from foresync.objects.predict import (
    PREDICTORS,
    HistoryPredictor,
    LinksPredictor,
    MultipartPredictor,
    PrefixPredictor,
    SequencePredictor,
    part_name,
)


def test_sequence_keeps_padding_and_suffix_once_a_run_is_seen() -> None:
    s = SequencePredictor()
    assert s.candidates("b/cam1/frame-000123.jpg", 3) == []  # a lone number is no run
    for name in ("b/cam1/frame-000122.jpg", "b/log-98", "b/obj-3"):
        s.observe(name)
    assert s.candidates("b/cam1/frame-000123.jpg", 3) == [
        "b/cam1/frame-000124.jpg", "b/cam1/frame-000125.jpg", "b/cam1/frame-000126.jpg"]
    assert s.candidates("b/log-99", 2) == ["b/log-100", "b/log-101"]
    assert s.candidates("b/obj-9", 2) == []  # a jump is no run
    assert s.candidates("b/no-number", 4) == []


def test_multipart_predicts_the_next_parts_of_the_same_upload() -> None:
    m = MultipartPredictor()
    first = part_name("b/backup.tar", "u1", 1)
    assert m.candidates(first, 2) == [part_name("b/backup.tar", "u1", 2), part_name("b/backup.tar", "u1", 3)]
    assert m.candidates("b/plain", 2) == []
    assert SequencePredictor().candidates(first, 2) == []
    assert m.candidates(part_name("b/k", "u", 10000), 3) == []


def test_history_learns_what_was_written_together() -> None:
    h = HistoryPredictor()
    for name in ("b/t1/data", "b/t1/manifest", "b/index", "b/other"):
        h.observe(name)
    assert h.candidates("b/t1/data", 3) == ["b/t1/manifest", "b/index", "b/other"]
    assert h.candidates("b/unknown", 3) == []


def test_prefix_predicts_recent_siblings_and_is_bounded() -> None:
    p = PrefixPredictor()
    for i in range(predict.PREFIX_KEYS_MAX + 10):
        p.observe(f"b/dir/k{i}")
    p.observe("b/elsewhere/x")
    got = p.candidates("b/dir/new", 1000)
    assert len(got) == predict.PREFIX_KEYS_MAX and got[0] == f"b/dir/k{predict.PREFIX_KEYS_MAX + 9}"
    assert "b/elsewhere/x" not in got


def test_history_memory_is_bounded() -> None:
    h = HistoryPredictor()
    for i in range(100):
        h.observe("b/hub")
        h.observe(f"b/spoke{i}")
    assert len(h.candidates("b/hub", 100)) <= predict.SUCCESSORS_MAX * 2


def test_links_take_the_surest_first_leave_history_room_and_respect_the_budget() -> None:
    links = LinksPredictor()
    for name in ("b/d/frame-001", "b/d/manifest", "b/d/frame-001"):
        links.observe(name)
    got = links.candidates("b/d/frame-001", 3)
    assert got == ["b/d/frame-002", "b/d/manifest", "b/d/frame-003"]
    assert links.candidates("b/d/frame-001", 8)[:2] == ["b/d/frame-002", "b/d/frame-003"]
    assert len(set(got)) == len(got)


def test_same_writes_same_predictions_for_every_predictor() -> None:
    writes = [f"b/p{i % 7}/obj-{i % 13:04d}" for i in range(200)]
    for make in PREDICTORS.values():
        one, two = make(), make()
        for name in writes:
            one.observe(name)
            two.observe(name)
        assert all(one.candidates(n, 6) == two.candidates(n, 6) for n in writes[:20])
    assert PREDICTORS["none"]().candidates("b/x-1", 5) == []


def test_links_keep_parts_to_the_multipart_link() -> None:
    links = LinksPredictor()
    for name in ("b/dir/a", part_name("b/big", "u1", 1), "b/dir/b", part_name("b/big", "u1", 2)):
        links.observe(name)
    assert links.candidates(part_name("b/big", "u1", 2), 3) == [
        part_name("b/big", "u1", n) for n in (3, 4, 5)]
    # No part became a sibling or a follower of a name.
    assert links.candidates("b/dir/c", 4) == ["b/dir/b", "b/dir/a"]
    assert links.candidates("b/dir/a", 1) == ["b/dir/b"]
