"""Heartbeats and the link timeout: when to PING, and when a silent peer counts as gone.

Theory of operation. A TCP connection whose peer vanished (a power cut, a partition, a half-open
socket) reports nothing: only silence shows it. So while a session is up, each core keeps a
``Liveness``: every frame it receives (``frame_received(now)``) proves the peer alive, and a peer
silent for ``timeout_s`` is declared gone (``Due.DEAD``): the core ends the link with the reason
operators know from the log ("no frame from the secondary for 10 s"), and the adapter closes it.
The primary also sends a PING every ``heartbeat_s`` (``Due.PING``): the secondary answers each
with a PONG, so an idle link still carries a frame each way per heartbeat, and the PONG's echoed
timestamp gives the link's round trip (/status ``link_rtt_s``, the resync window).

The core adds ``deadline()`` to its ``get_timer`` and asks ``due(now)`` in ``handle_timer``, so
the daemon's timer only sleeps until the core's deadline, and the seeded simulator, which calls
``handle_timer`` with its virtual clock, runs the same policy. The checks are ``>=`` against the
deadline ``deadline()`` gave: a timer that wakes exactly at it must find the work due, or the
adapter would spin on a deadline in the past.
"""

from __future__ import annotations

from enum import Enum


class Due(Enum):
    NOTHING = "nothing"
    PING = "ping"  # send a PING now (the primary's heartbeat)
    DEAD = "dead"  # no frame for timeout_s: end the link; the liveness stops until restarted


class Liveness:
    """One session's heartbeat and timeout. Inactive (no deadline) until ``start``."""

    __slots__ = ("_active", "_next_ping", "heartbeat_s", "ignores_frames", "ignores_silence",
                 "last_frame", "pings", "timeout_s")

    def __init__(self, heartbeat_s: float, timeout_s: float, *, pings: bool,
                 ignores_frames: bool = False, ignores_silence: bool = False) -> None:
        if heartbeat_s <= 0 or timeout_s <= 0:
            raise ValueError(f"heartbeat ({heartbeat_s} s) and timeout ({timeout_s} s) must be positive")
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.pings = pings  # this side sends the heartbeat (the primary)
        self.ignores_frames = ignores_frames  # deliberately wrong (faults.py): see frame_received
        self.ignores_silence = ignores_silence  # deliberately wrong (faults.py): never DEAD
        self.last_frame = 0.0  # when the last frame arrived (the adapter's monotonic clock)
        self._active = False
        self._next_ping = 0.0

    @property
    def active(self) -> bool:
        return self._active

    def start(self, now: float) -> None:
        """A session began at ``now``: its first frame is due within ``timeout_s``. The next
        PING is due one heartbeat on (the core sends one at once when it greets)."""
        self._active = True
        self.last_frame = now
        self._next_ping = now + self.heartbeat_s

    def stop(self) -> None:
        """The session ended: no deadline until the next ``start``."""
        self._active = False

    def frame_received(self, now: float) -> None:
        """Any frame from the peer: it is alive. (On the hot path: one attribute store.)"""
        if not self.ignores_frames:
            self.last_frame = now

    def deadline(self) -> float | None:
        """When ``due`` next has something to say, or None while no session is up."""
        if not self._active:
            return None
        if self.ignores_silence:  # deliberately wrong: see faults.py
            return self._next_ping if self.pings else None
        dead_at = self.last_frame + self.timeout_s
        return min(dead_at, self._next_ping) if self.pings else dead_at

    def due(self, now: float) -> Due:
        """What is due at ``now``. DEAD stops the liveness; PING schedules the next one."""
        if not self._active:
            return Due.NOTHING
        if now >= self.last_frame + self.timeout_s and not self.ignores_silence:
            self._active = False
            return Due.DEAD
        if self.pings and now >= self._next_ping:
            self._next_ping = now + self.heartbeat_s
            return Due.PING
        return Due.NOTHING

    def silence_reason(self, peer: str) -> str:
        """Why the link ended after DEAD, as the log and /status say it."""
        return f"no frame from the {peer} for {self.timeout_s:g} s"
