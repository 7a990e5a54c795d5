"""The predictors (record/predict.py): "next N", and the history of misses."""

from __future__ import annotations

from foresync.record.predict import HistoryPredictor, Predictor, additions


def test_next_is_the_claims_rule() -> None:
    assert list(Predictor().candidates(range(3, 5), 3, 100)) == [5, 6, 7]
    assert list(Predictor().candidates(range(98, 100), 3, 100)) == []


def test_history_learns_which_extent_missed_after_this_one() -> None:
    """A journal commit at 10 is followed by metadata at 70, then data at 40: once seen, a miss
    at 10 predicts 70, then 40, interleaved with the next extents."""
    predictor = HistoryPredictor()
    for extent in (10, 70, 40):
        predictor.observe(range(extent, extent + 1))
    assert list(predictor.candidates(range(10, 11), 4, 100))[:4] == [70, 11, 40, 12]


def test_history_detects_a_stride() -> None:
    predictor = HistoryPredictor()
    for extent in (0, 8, 16):
        predictor.observe(range(extent, extent + 1))
    candidates = list(predictor.candidates(range(24, 25), 2, 100))
    assert 32 in candidates and 40 in candidates and 25 in candidates


def test_history_is_bounded() -> None:
    predictor = HistoryPredictor()
    for extent in range(HistoryPredictor.HISTORY_MAX + 10):
        predictor.observe(range(extent * 2, extent * 2 + 1))
    assert len(predictor._after) == HistoryPredictor.HISTORY_MAX


def test_additions_take_touched_first_then_candidates_within_the_budget() -> None:
    predictor = HistoryPredictor()
    for extent in (10, 70):
        predictor.observe(range(extent, extent + 1))
    present = {9}
    assert additions(predictor, range(9, 11), 3, 4, 100, present) == [10, 70, 11]
    assert additions(Predictor(), range(9, 11), 1, 4, 100, present) == [10]
