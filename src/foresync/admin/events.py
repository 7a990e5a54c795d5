"""`GET /events`: one JSON object a line per state change, in the spirit of `drbdsetup events2`.

The events are derived from the site's own ``/status`` document (whose resync ``passes`` and
verify ``runs`` counters make even a pass shorter than one sample show as started and finished): ``changes(old, new)`` compares
two documents and names what changed (role and epoch, link up or down with the reason, resync
started, progress and finished, consistent, in sync, split brain, verify, a storage failure, and
the record found too small for the workload, or big enough again);
``current_state(doc)`` describes a document as the events that would have led to it, which
``--since-start`` replays first. Admin actions come from the admin server's audit hook, as
they are answered.

``EventFeed.watch`` samples ``/status`` every ``interval_s`` (0.25 s) and publishes the
changes, and resync and verify progress every ``progress_s`` (2 s) while they run. Sampling
alone would miss a change undone within one interval (a link that drops and returns in 0.1 s),
so the daemon also samples at the edges themselves: each site calls ``sample`` when its link
goes up or down (``on_state_change``), and the runner when the role switches. Resync passes
and verify runs are counted (``passes``, ``runs``), so one shorter than a sample still shows
as started and finished. Subscribers get bounded queues: a reader
that falls ``MAX_QUEUED`` events behind is told so (``{"type": "overflow"}``) and dropped,
never allowed to grow the daemon's memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any

from foresync.record.estimate import advice

Event = dict[str, Any]
StatusFn = Callable[[], dict[str, Any]]

MAX_QUEUED = 1000
_RESYNC_KEYS = ("done_bytes", "total_bytes", "rate_bytes_per_s", "compare_total_bytes",
                "compare_done_bytes", "send_total_bytes", "send_done_bytes", "received_bytes")
_VERIFY_KEYS = ("done_extents", "total_extents", "done_bytes", "total_bytes", "mismatches")
RECORD_JUDGED_AFTER_WRITES = 1000  # fewer writes say too little about the record's size
RECORD_MISS_TARGET = 0.05  # as the sizing line of `foresync status` (record/estimate.advice)


def _link_up(doc: dict[str, Any]) -> bool:
    return bool(doc.get("link") == "connected")


def _resync_active(doc: dict[str, Any]) -> bool:
    return bool((doc.get("resync") or {}).get("active"))


def _verify(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("verify") or {}


def _record_too_small(doc: dict[str, Any]) -> bool | None:
    """Whether more than ``RECORD_MISS_TARGET`` of the primary's writes since it started missed
    the record; None on a secondary, or before ``RECORD_JUDGED_AFTER_WRITES`` writes."""
    counters = doc.get("counters") or {}
    writes = int(counters.get("writes", 0))
    if doc.get("role") != "primary" or writes < RECORD_JUDGED_AFTER_WRITES:
        return None
    return int(counters.get("record_misses", 0)) / writes > RECORD_MISS_TARGET


def _record_event(doc: dict[str, Any]) -> Event:
    counters, record = doc.get("counters") or {}, doc.get("record") or {}
    ratio = int(counters.get("record_misses", 0)) / max(1, int(counters.get("writes", 0)))
    capacity = int(record.get("capacity", 0))
    estimates = {int(c): float(m) for c, m in (record.get("miss_ratio_estimate") or {}).items()}
    return {"type": "record", "too_small": bool(_record_too_small(doc)),
            "miss_ratio": round(ratio, 4), "capacity": capacity,
            "advice": advice(capacity, int(record.get("extent_size_bytes", 0)), ratio, estimates,
                             RECORD_MISS_TARGET)}


def _resync_event(phase: str, doc: dict[str, Any]) -> Event:
    resync = doc.get("resync") or {}
    return {"type": "resync", "phase": phase, **{k: resync[k] for k in _RESYNC_KEYS if k in resync}}


def _verify_event(phase: str, doc: dict[str, Any]) -> Event:
    verify = _verify(doc)
    event = {"type": "verify", "phase": phase, **{k: verify[k] for k in _VERIFY_KEYS if k in verify}}
    if phase == "finished":
        event["mismatched_extents"] = verify.get("mismatched_extents", [])
        event["mismatched_offsets"] = verify.get("mismatched_offsets", [])
    return event


def current_state(doc: dict[str, Any]) -> list[Event]:
    """The events that describe ``doc`` as it is (``--since-start``)."""
    events: list[Event] = [
        {"type": "role", "role": doc["role"], "epoch": doc["epoch"]},
        {"type": "link", "state": "up" if _link_up(doc) else "down",
         "reason": doc.get("link_error", "")},
        {"type": "consistent", "consistent": bool(doc.get("consistent", True))},
        {"type": "in_sync", "in_sync": bool(doc.get("in_sync"))},
        {"type": "split_brain", "split_brain": bool(doc.get("split_brain"))},
    ]
    if _resync_active(doc):
        events.append(_resync_event("progress", doc))
    if _verify(doc).get("active"):
        events.append(_verify_event("progress", doc))
    if _record_too_small(doc):
        events.append(_record_event(doc))
    return events


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """What changed between two /status documents of one site, in a fixed order."""
    events: list[Event] = []
    if (old["role"], old["epoch"]) != (new["role"], new["epoch"]):
        events.append({"type": "role", "role": new["role"], "epoch": new["epoch"]})
    if _link_up(old) != _link_up(new) or (not _link_up(new) and new.get("link_error")
                                          and old.get("link_error") != new.get("link_error")):
        events.append({"type": "link", "state": "up" if _link_up(new) else "down",
                       "reason": new.get("link_error", "")})
    passes = (old.get("resync") or {}).get("passes"), (new.get("resync") or {}).get("passes")
    if passes[0] != passes[1] and not _resync_active(old):  # began since (and may be over)
        events.append(_resync_event("started", new))
        if not _resync_active(new):
            events.append(_resync_event("finished", new))
    elif _resync_active(old) != _resync_active(new):
        events.append(_resync_event("started" if _resync_active(new) else "finished", new))
    for key in ("consistent", "in_sync", "split_brain"):
        default = key == "consistent"
        if bool(old.get(key, default)) != bool(new.get(key, default)):
            events.append({"type": key, key: bool(new.get(key, default))})
    was, now = bool(_verify(old).get("active")), bool(_verify(new).get("active"))
    if _verify(old).get("runs") != _verify(new).get("runs") and not was:  # one began since
        events.append(_verify_event("started", new))
        if not now:
            events.append(_verify_event("finished", new))
    elif was != now:
        events.append(_verify_event("started" if now else "finished", new))
    for key in ("storage_error", "secondary_error", "metadata_damage"):
        if old.get(key, "") != new.get(key, ""):
            events.append({"type": key, "error": new.get(key, "")})
    verdict = _record_too_small(new)
    if verdict is not None and verdict != bool(_record_too_small(old)):
        events.append(_record_event(new))  # too small now, or big enough again
    return events


def stamp(event: Event, now: float) -> Event:
    ts = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return {"ts": ts, **event}


class EventFeed:
    """Publishes the site's events to every ``/events`` reader."""

    def __init__(self, status: StatusFn, interval_s: float = 0.25, progress_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._status = status
        self.interval_s = interval_s
        self.progress_s = progress_s
        self._clock = clock
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._last: dict[str, Any] | None = None
        self._closed = False

    def publish(self, event: Event) -> None:
        stamped = stamp(event, self._clock())
        for queue in list(self._subscribers):
            if queue.qsize() >= MAX_QUEUED - 1:
                queue.put_nowait({"type": "overflow", "ts": stamped["ts"],
                                  "error": f"this reader fell {MAX_QUEUED} events behind"})
                queue.put_nowait(None)
                self._subscribers.discard(queue)
            else:
                queue.put_nowait(stamped)

    def sample(self) -> None:
        """Compare /status with the last sample and publish what changed."""
        doc = self._status()
        if self._last is not None:
            for event in changes(self._last, doc):
                self.publish(event)
        self._last = doc

    async def watch(self) -> None:
        """Sample until cancelled; progress every ``progress_s`` while a resync or verify runs."""
        last_progress = self._clock()
        while True:
            self.sample()
            now = self._clock()
            if self._last is not None and now - last_progress >= self.progress_s:
                last_progress = now
                if _resync_active(self._last):
                    self.publish(_resync_event("progress", self._last))
                if _verify(self._last).get("active"):
                    self.publish(_verify_event("progress", self._last))
            await asyncio.sleep(self.interval_s)

    def close(self) -> None:
        """End every stream (the daemon stops)."""
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()

    async def stream(self, since_start: bool) -> AsyncGenerator[bytes, None]:
        """One reader's events as JSON lines, the current state first with ``since_start``."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self._closed:
            return
        self._subscribers.add(queue)
        try:
            if since_start:
                now = self._clock()
                for state in current_state(self._status()):
                    yield (json.dumps(stamp({**state, "replay": True}, now)) + "\n").encode()
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield (json.dumps(event) + "\n").encode()
        finally:
            self._subscribers.discard(queue)
