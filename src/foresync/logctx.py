"""Log context: the volume a process serves, put on every log line as ``vol=<name>``.

The CLI installs the filter on its one handler; ``run`` names the volume once its config is
loaded. Nothing else configures logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar


class VolumeContext(logging.Filter):
    volume = "-"
    # A daemon of many volumes (issue 16) names each unit's volume in the context its tasks (and
    # the callbacks they set up) run in; the class attribute is the daemon-wide fallback.
    current: ContextVar[str | None] = ContextVar("foresync_volume", default=None)

    def filter(self, record: logging.LogRecord) -> bool:
        record.volume = VolumeContext.current.get() or VolumeContext.volume
        return True


class LogBudget:
    """At most ``per_window`` lines of one kind per ``window_s``: a peer that provokes the same
    line over and over (strangers on the link port, a full metadata disk under every write)
    must not flood the log. Lines over the budget are counted, and the first line of the next
    window says how many were left out."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], level: int,
                 what: str, per_window: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._level = level
        self._what = what
        self._per_window = per_window
        self._window_s = window_s
        self._clock = clock
        self._window_start = -window_s  # the first line opens a window
        self._logged = 0
        self.suppressed = 0  # left out in the current window

    def __call__(self, message: str, *args: object) -> bool:
        """Log ``message % args`` if the budget allows; True when it was logged."""
        now = self._clock()
        if now - self._window_start >= self._window_s:
            if self.suppressed:
                self._logger.log(self._level, "%s: %d more were not logged in the last %.0f s",
                                 self._what, self.suppressed, self._window_s)
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged >= self._per_window:
            if not self.suppressed:
                self._logger.log(self._level, "%s: over %d in %.0f s; the rest are counted, not "
                                 "logged", self._what, self._per_window, self._window_s)
            self.suppressed += 1
            return False
        self._logged += 1
        self._logger.log(self._level, message, *args)
        return True


class JsonFormatter(logging.Formatter):
    """``[log] format = "json"``: one JSON object a line for log collectors, with the same facts
    as the text line (time, level, volume, logger, message) under fixed keys; a traceback, if
    any, goes in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        doc = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "volume": getattr(record, "volume", VolumeContext.volume),
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)
