"""nbd/tracing.py: a TracingTarget records each typed call with the NBD command and flag bits
the server decoded, then passes the call on unchanged."""

from __future__ import annotations

from pathlib import Path

from foresync.nbd import trace
from foresync.nbd.tracing import TraceWriter, TracingTarget
from foresync.testing.targets import RecordingTarget

Inner = RecordingTarget


def test_each_typed_call_is_traced_with_its_command_and_flags_and_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "t.fstrace"
    inner = Inner()
    target = TracingTarget(inner, TraceWriter(str(path), inner.size))
    answers: list[int] = []
    target.write(4096, b"abc", True, answers.append)
    target.zero(0, 512, False, False, True, answers.append)  # NO_HOLE and FAST_ZERO
    target.trim(512, 512, True, answers.append)
    target.flush(answers.append)
    target.cache(0, 4096, answers.append)
    target.read(0, 16)
    target.writer.close()
    assert answers == [0] * 5
    assert inner.calls == [("write", 4096, b"abc", True), ("zero", 0, 512, False, False, True),
                           ("trim", 512, 512, True), ("flush",), ("cache", 0, 4096)]
    _, records = trace.decode(path.read_bytes())
    assert [(r.command, r.flags, r.offset, r.length) for r in records] == [
        (trace.WRITE, 1, 4096, 3), (trace.WRITE_ZEROES, 2 | 16, 0, 512), (trace.TRIM, 1, 512, 512),
        (trace.FLUSH, 0, 0, 0), (trace.CACHE, 0, 0, 4096), (trace.READ, 0, 0, 16)]
