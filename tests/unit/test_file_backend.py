"""Unit tests for ``foresync.storage.file_backend`` on real files in a temporary directory.

Holes are checked with 64 KiB alignment, larger than any filesystem block, so SEEK_DATA and
SEEK_HOLE answer exactly. Failures the filesystem will not produce on demand (ENOSPC, EIO, a
filesystem without fallocate) are injected by replacing the one system call involved.
"""

from __future__ import annotations

import errno
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import ConfigError, StorageError
from foresync.storage import file_backend
from foresync.storage.file_backend import FileBackend

BLOCK = 64 * 1024
SIZE = 16 * BLOCK
HOLE = 3  # base:allocation HOLE | ZERO
DATA = 0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "volume.img"


@pytest.fixture
def backend(path: Path) -> Iterator[FileBackend]:
    backend = FileBackend(str(path), SIZE)
    yield backend
    backend.close()


def pattern(length: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(length))


def on_disk(path: Path, offset: int, length: int) -> bytes:
    """Read through a separate descriptor, to check what reached the file and not a cache of ours."""
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def fail_with(code: int) -> Callable[..., None]:
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


# -- opening and creating -------------------------------------------------------------------------


def test_a_missing_file_is_created_sparse(path: Path, backend: FileBackend) -> None:
    info = path.stat()
    assert info.st_size == SIZE
    assert info.st_blocks == 0
    assert info.st_mode & 0o777 == 0o600
    assert backend.read(0, SIZE) == bytes(SIZE)
    assert backend.extents(0, SIZE) == [(SIZE, HOLE)]
    assert backend.is_block_device is False


@pytest.mark.parametrize(("read_only", "create"), [(False, False), (True, True), (True, False)])
def test_a_missing_file_is_not_created_unless_allowed(
    path: Path, read_only: bool, create: bool
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FileBackend(str(path), SIZE, read_only=read_only, create=create)
    assert not path.exists()


@pytest.mark.parametrize("actual", [SIZE - 1, SIZE + 1, 0])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_of_another_size_is_refused_and_left_untouched(
    path: Path, actual: int, read_only: bool
) -> None:
    content = pattern(actual)
    path.write_bytes(content)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    before = path.stat()
    with pytest.raises(ConfigError, match=rf"is {actual} bytes .* configured size is {SIZE} bytes"):
        FileBackend(str(path), SIZE, read_only=read_only)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert path.read_bytes() == content


def test_an_existing_file_of_the_right_size_keeps_its_data(path: Path) -> None:
    content = pattern(SIZE)
    path.write_bytes(content)
    backend = FileBackend(str(path), SIZE, create=False)
    try:
        assert backend.read(0, SIZE) == content
    finally:
        backend.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_directory_is_refused(tmp_path: Path, read_only: bool) -> None:
    with pytest.raises(ConfigError):
        FileBackend(str(tmp_path), SIZE, read_only=read_only)


def test_a_file_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FileBackend(str(tmp_path / "no" / "such" / "volume.img"), SIZE)


@pytest.mark.parametrize("size", [(1 << 63) - 1, 1 << 64])
def test_a_volume_too_large_for_a_file_leaves_nothing_behind(path: Path, size: int) -> None:
    with pytest.raises(ConfigError):
        FileBackend(str(path), size)
    assert not path.exists()


def test_close_is_idempotent_and_keeps_the_file(path: Path) -> None:
    backend = FileBackend(str(path), SIZE)
    backend.write(0, b"kept")
    backend.close()
    backend.close()
    assert backend.fd == -1
    assert on_disk(path, 0, 4) == b"kept"


# -- read, write, flush ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1), (1, 4095), (BLOCK - 3, 7), (SIZE - 10, 10), (0, SIZE)]
)
def test_write_then_read_back(path: Path, backend: FileBackend, offset: int, length: int) -> None:
    data = pattern(length, seed=offset)
    backend.write(offset, data)
    assert backend.read(offset, length) == data
    assert on_disk(path, offset, length) == data
    if offset:
        assert backend.read(0, offset) == bytes(offset)
    assert path.stat().st_size == SIZE


def test_write_parts_lands_the_parts_back_to_back(path: Path, backend: FileBackend) -> None:
    backend.write_parts(4096, [b"a" * 3, b"b" * 4096, b"c"])
    assert backend.read(4096, 4100) == b"a" * 3 + b"b" * 4096 + b"c"


def test_a_short_pwrite_is_continued(
    path: Path, backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        return real_pwrite(fd, data[:3], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    backend.write(100, b"0123456789")
    assert calls == [100, 103, 106, 109]
    assert on_disk(path, 100, 10) == b"0123456789"


@pytest.mark.parametrize(
    ("code", "nbd_errno"),
    [(errno.ENOSPC, 28), (errno.EDQUOT, 28), (errno.EIO, 5), (errno.EFBIG, 5)],
)
def test_write_failures_become_storage_errors(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch, code: int, nbd_errno: int
) -> None:
    monkeypatch.setattr(os, "pwrite", fail_with(code))
    with pytest.raises(StorageError) as caught:
        backend.write(0, b"x")
    assert caught.value.errno == nbd_errno


def test_a_read_only_backend_cannot_write(path: Path) -> None:
    path.write_bytes(pattern(SIZE))
    backend = FileBackend(str(path), SIZE, read_only=True)
    try:
        assert backend.read_only is True
        with pytest.raises(StorageError):
            backend.write(0, b"nope")
    finally:
        backend.close()
    assert path.read_bytes() == pattern(SIZE)


def test_read_failures_become_storage_errors(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pread", fail_with(errno.EIO))
    with pytest.raises(StorageError, match="read of 512 bytes at 0"):
        backend.read(0, 512)


def test_reads_past_the_end_of_a_file_shrunk_underneath_are_zeroes(
    path: Path, backend: FileBackend
) -> None:
    backend.write(0, pattern(200))
    os.truncate(path, 100)
    assert backend.read(50, 100) == pattern(200)[50:100] + bytes(50)


def test_flush_is_fdatasync_of_the_volume(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    backend.flush()
    assert synced == [backend.fd]


def test_flush_failure_is_a_storage_error(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fdatasync", fail_with(errno.EIO))
    with pytest.raises(StorageError, match="fdatasync"):
        backend.flush()


def test_cache_advises_the_kernel(backend: FileBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    advice = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: advice.append(args))
    backend.cache(BLOCK, 2 * BLOCK)
    assert advice == [(backend.fd, BLOCK, 2 * BLOCK, os.POSIX_FADV_WILLNEED)]


# -- trim and zero ---------------------------------------------------------------------------------


def filled(backend: FileBackend, blocks: int = 3) -> bytes:
    data = pattern(blocks * BLOCK)
    backend.write(0, data)
    return data


def test_trim_punches_a_hole(path: Path, backend: FileBackend) -> None:
    data = filled(backend)
    allocated = path.stat().st_blocks
    backend.trim(BLOCK, BLOCK)
    assert backend.read(0, 3 * BLOCK) == data[:BLOCK] + bytes(BLOCK) + data[2 * BLOCK :]
    assert backend.extents(0, 3 * BLOCK) == [(BLOCK, DATA), (BLOCK, HOLE), (BLOCK, DATA)]
    assert path.stat().st_blocks < allocated
    assert path.stat().st_size == SIZE


def test_trim_of_nothing_changes_nothing(backend: FileBackend) -> None:
    data = filled(backend)
    backend.trim(BLOCK, 0)
    assert backend.read(0, 3 * BLOCK) == data


def test_trim_without_hole_punching_leaves_the_data(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TRIM is advisory: keeping the data is a correct answer.
    data = filled(backend)
    monkeypatch.setattr(file_backend, "fallocate", fail_with(errno.EOPNOTSUPP))
    backend.trim(0, BLOCK)
    assert backend.read(0, 3 * BLOCK) == data


def spy_fallocate(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    modes: list[int] = []
    real = file_backend.fallocate

    def spy(fd: int, mode: int, offset: int, length: int) -> None:
        modes.append(mode)
        real(fd, mode, offset, length)

    monkeypatch.setattr(file_backend, "fallocate", spy)
    return modes


def test_zero_that_may_punch_leaves_a_hole(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = filled(backend)
    modes = spy_fallocate(monkeypatch)
    assert backend.zero(BLOCK, BLOCK, may_punch=True, fast_only=True) is True
    assert modes == [file_backend.FALLOC_FL_PUNCH_HOLE | file_backend.FALLOC_FL_KEEP_SIZE]
    assert backend.read(0, 3 * BLOCK) == data[:BLOCK] + bytes(BLOCK) + data[2 * BLOCK :]
    assert backend.extents(BLOCK, BLOCK) == [(BLOCK, HOLE)]


def test_zero_with_no_hole_does_not_punch(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = filled(backend)
    modes = spy_fallocate(monkeypatch)
    assert backend.zero(100, BLOCK, may_punch=False, fast_only=False) is True
    assert all(not mode & file_backend.FALLOC_FL_PUNCH_HOLE for mode in modes)
    assert backend.read(0, 3 * BLOCK) == data[:100] + bytes(BLOCK) + data[100 + BLOCK :]
    assert os.fstat(backend.fd).st_size == SIZE


def test_zero_without_fallocate_writes_zeroes_unless_asked_to_be_fast(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = filled(backend)
    calls = []

    def unsupported(*args: int) -> None:
        calls.append(args)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(file_backend, "fallocate", unsupported)
    assert backend.zero(0, BLOCK, may_punch=True, fast_only=True) is False
    assert backend.read(0, 3 * BLOCK) == data  # a fast zero that cannot be fast does nothing
    assert backend.zero(0, BLOCK + 5, may_punch=True, fast_only=False) is True
    assert backend.read(0, 3 * BLOCK) == bytes(BLOCK + 5) + data[BLOCK + 5 :]
    assert len(calls) == 2  # each mode is tried once, then remembered as unsupported


def test_zero_writes_large_ranges_in_bounded_chunks(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.write(0, pattern(SIZE))
    monkeypatch.setattr(file_backend, "fallocate", fail_with(errno.ENOSYS))
    real_pwrite = os.pwrite
    sizes = []

    def spy(fd: int, data: bytes, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    assert backend.zero(1, SIZE - 2, may_punch=False, fast_only=False) is True
    assert max(sizes) <= 1 << 20
    assert sum(sizes) == SIZE - 2
    assert backend.read(0, SIZE) == pattern(SIZE)[:1] + bytes(SIZE - 2) + pattern(SIZE)[-1:]


def test_zero_of_nothing_does_nothing(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = spy_fallocate(monkeypatch)
    assert backend.zero(BLOCK, 0, may_punch=True, fast_only=False) is True
    assert modes == []


@pytest.mark.parametrize("operation", ["trim", "zero"])
def test_fallocate_failures_other_than_unsupported_are_storage_errors(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    monkeypatch.setattr(file_backend, "fallocate", fail_with(errno.EIO))
    with pytest.raises(StorageError, match="fallocate"):
        if operation == "trim":
            backend.trim(0, BLOCK)
        else:
            backend.zero(0, BLOCK, may_punch=True, fast_only=False)


def test_the_real_fallocate_reports_errors_as_oserror(backend: FileBackend) -> None:
    with pytest.raises(OSError) as caught:
        file_backend.fallocate(
            backend.fd, file_backend.FALLOC_FL_PUNCH_HOLE, 0, BLOCK
        )  # no KEEP_SIZE
    assert caught.value.errno in (errno.EOPNOTSUPP, errno.EINVAL)


# -- extents ---------------------------------------------------------------------------------------


def test_extents_follow_data_and_holes(backend: FileBackend) -> None:
    backend.write(BLOCK, pattern(BLOCK))
    backend.write(SIZE - BLOCK, pattern(BLOCK))
    assert backend.extents(0, SIZE) == [
        (BLOCK, HOLE),
        (BLOCK, DATA),
        (SIZE - 3 * BLOCK, HOLE),
        (BLOCK, DATA),
    ]
    assert backend.extents(BLOCK // 2, BLOCK) == [(BLOCK // 2, HOLE), (BLOCK // 2, DATA)]
    assert backend.extents(BLOCK + 1, 10) == [(10, DATA)]
    assert backend.extents(3 * BLOCK, 2 * BLOCK) == [(2 * BLOCK, HOLE)]


def test_extents_stop_at_the_end_of_the_volume(backend: FileBackend) -> None:
    backend.write(SIZE - BLOCK, pattern(BLOCK))
    assert backend.extents(SIZE - 2 * BLOCK, 10 * BLOCK) == [(BLOCK, HOLE), (BLOCK, DATA)]
    assert backend.extents(SIZE, BLOCK) == []


def test_extents_without_seek_data_report_everything_as_data(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lseek = os.lseek

    def no_seek_data(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "invalid")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", no_seek_data)
    assert backend.extents(BLOCK, 2 * BLOCK) == [(2 * BLOCK, DATA)]
    monkeypatch.setattr(os, "lseek", real_lseek)
    assert backend.extents(0, BLOCK) == [(BLOCK, DATA)]  # remembered: not asked again


@settings(max_examples=40, deadline=None)
@given(
    written=st.sets(st.integers(0, SIZE // BLOCK - 1), max_size=8),
    offset=st.integers(0, SIZE - 1),
    length=st.integers(1, 2 * SIZE),
)
def test_extents_cover_the_range_and_match_what_was_written(
    written: set[int], offset: int, length: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        backend = FileBackend(os.path.join(directory, "v.img"), SIZE)
        try:
            for block in written:
                backend.write(block * BLOCK, pattern(BLOCK, block))
            extents = backend.extents(offset, length)
        finally:
            backend.close()
    assert sum(n for n, _ in extents) == min(length, SIZE - offset)
    assert all(n > 0 for n, _ in extents)
    assert all(a[1] != b[1] for a, b in itertools.pairwise(extents)), "neighbours merge"
    pos = offset
    for n, flags in extents:
        for byte in (pos, pos + n - 1):
            assert (byte // BLOCK in written) == (flags == DATA)
        pos += n


def test_read_unless_hole_skips_holes_and_reads_data(backend: FileBackend) -> None:
    backend.write(BLOCK, pattern(BLOCK))
    reads: list[tuple[int, int]] = []
    real_read = backend.read

    def counting_read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return real_read(offset, length)

    backend.read = counting_read  # type: ignore[method-assign]
    assert backend.read_unless_hole(4 * BLOCK, 2 * BLOCK) == bytes(2 * BLOCK)
    assert reads == []  # a hole is not read, so it does not land in the page cache
    assert backend.read_unless_hole(0, 2 * BLOCK) == bytes(BLOCK) + pattern(BLOCK)
    assert backend.read_unless_hole(BLOCK, BLOCK) == pattern(BLOCK)
    assert reads == [(0, 2 * BLOCK), (BLOCK, BLOCK)]
