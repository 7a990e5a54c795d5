"""``LogBudget``: at most N lines of a kind per window, the rest counted and reported."""

from __future__ import annotations

import logging

import pytest

from foresync.logctx import LogBudget


def test_lines_over_the_budget_are_counted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    budget = LogBudget(logging.getLogger("t"), logging.WARNING, "refusals", per_window=3,
                       window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        logged = [budget("refused %d", n) for n in range(10)]
        assert logged == [True] * 3 + [False] * 7
        assert budget.suppressed == 7
        now[0] = 59.0
        assert not budget("refused late")
        now[0] = 61.0
        assert budget("refused again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1", "refused 2",
                     "refusals: over 3 in 60 s; the rest are counted, not logged",
                     "refusals: 8 more were not logged in the last 60 s", "refused again"]
