"""Unit tests for ``foresync.storage.memory_backend``, the in-memory store the simulator runs on."""

from __future__ import annotations

import pytest

from foresync.errors import InvariantViolation
from foresync.storage.memory_backend import MemoryBackend

SIZE = 4096
DATA = 0


def test_a_new_volume_reads_as_zeroes() -> None:
    backend = MemoryBackend(SIZE)
    assert backend.read(0, SIZE) == bytes(SIZE)
    assert (backend.size, backend.read_only, backend.flushes) == (SIZE, False, 0)


def test_write_then_read_back() -> None:
    backend = MemoryBackend(SIZE)
    backend.write(10, b"hello")
    backend.write(SIZE - 3, b"end")
    assert backend.read(8, 9) == b"\0\0hello\0\0"
    assert backend.read(SIZE - 4, 4) == b"\0end"
    assert len(backend.data) == SIZE


@pytest.mark.parametrize("may_punch", [False, True])
def test_zero_and_trim_make_zeroes(may_punch: bool) -> None:
    backend = MemoryBackend(SIZE)
    backend.write(0, b"\xff" * SIZE)
    assert backend.zero(100, 50, may_punch=may_punch, fast_only=True) is True
    backend.trim(1000, 24)
    data = backend.read(0, SIZE)
    assert data == b"\xff" * 100 + bytes(50) + b"\xff" * 850 + bytes(24) + b"\xff" * (SIZE - 1024)


def test_flush_is_counted() -> None:
    backend = MemoryBackend(SIZE)
    backend.flush()
    backend.flush()
    assert backend.flushes == 2


def test_extents_report_the_range_as_data_clamped_to_the_volume() -> None:
    backend = MemoryBackend(SIZE)
    assert backend.extents(0, SIZE) == [(SIZE, DATA)]
    assert backend.extents(SIZE - 10, 100) == [(10, DATA)]


OUT_OF_RANGE = [(SIZE - 2, 3), (SIZE, 1), (SIZE + 10, 0), (-1, 1)]


@pytest.mark.parametrize(("offset", "length"), OUT_OF_RANGE)
def test_out_of_range_access_is_a_programmer_error_that_changes_nothing(
    offset: int, length: int
) -> None:
    # Unchecked, a bytearray slice would silently grow the volume (or read short).
    backend = MemoryBackend(SIZE)
    backend.write(SIZE - 4, b"tail")
    with pytest.raises(InvariantViolation):
        backend.write(offset, b"x" * length)
    with pytest.raises(InvariantViolation):
        backend.zero(offset, length, may_punch=True, fast_only=False)
    with pytest.raises(InvariantViolation):
        backend.trim(offset, length)
    with pytest.raises(InvariantViolation):
        backend.read(offset, length)
    assert len(backend.data) == SIZE
    assert backend.read(SIZE - 4, 4) == b"tail"


def test_the_whole_volume_and_empty_ranges_at_the_end_are_in_range() -> None:
    backend = MemoryBackend(SIZE)
    backend.write(0, b"\1" * SIZE)
    backend.write(SIZE, b"")
    assert backend.read(SIZE, 0) == b""
    assert backend.zero(SIZE, 0, may_punch=False, fast_only=False) is True
    assert backend.read(0, SIZE) == b"\1" * SIZE
