"""What a consistency group's backend adds per call: GroupBackend over two member files against
FileBackend over one file, in the same run (issue 16 part 2).

Each call of a group is split by the layout (a bisect over the member bases, one Piece) and
forwarded to the member's FileBackend. This measures the CPU of 4 KiB pwrites and preads through
both, interleaved in rounds so that a loaded machine slows both alike, and prints the cost added
per call and the ratio.

Run: ``.venv/bin/python bench/group_backend.py`` (about 10 s).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from foresync.group_layout import GroupLayout
from foresync.storage.file_backend import FileBackend
from foresync.storage.group_backend import GroupBackend

MiB = 1 << 20
BLOCK = 4096


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _run(backend: FileBackend | GroupBackend, offsets: list[int], data: bytes) -> tuple[float, float]:
    """CPU seconds for a write, then a read, at every offset."""
    start = _cpu()
    for offset in offsets:
        backend.write(offset, data)
    middle = _cpu()
    for offset in offsets:
        backend.read(offset, BLOCK)
    return middle - start, _cpu() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = 64 * MiB
    with tempfile.TemporaryDirectory() as tmp:
        single = FileBackend(str(Path(tmp) / "one.img"), 2 * size)
        layout = GroupLayout([("data", size), ("wal", size)], MiB)
        group = GroupBackend(layout, [FileBackend(str(Path(tmp) / f"{n}.img"), size) for n in ("data", "wal")])
        rng = random.Random(1)
        offsets = [rng.randrange(2 * size // BLOCK) * BLOCK for _ in range(args.calls)]
        data = os.urandom(BLOCK)
        for backend in (single, group):  # every page once: steady state, no allocation
            for offset in range(0, 2 * size, MiB):
                backend.write(offset, bytes(MiB))
        totals = {"file": [0.0, 0.0], "group": [0.0, 0.0]}
        wall = time.monotonic()
        for _ in range(args.rounds):
            for name, backend in (("file", single), ("group", group)):
                write_s, read_s = _run(backend, offsets, data)
                totals[name][0] += write_s
                totals[name][1] += read_s
        calls = args.calls * args.rounds
        print(f"{calls} calls of 4 KiB each way, {args.rounds} interleaved rounds, "
              f"{time.monotonic() - wall:.1f} s")
        for i, what in enumerate(("write", "read")):
            file_us = totals["file"][i] / calls * 1e6
            group_us = totals["group"][i] / calls * 1e6
            print(f"{what}: FileBackend {file_us:.2f} us, GroupBackend {group_us:.2f} us CPU per call "
                  f"(+{group_us - file_us:.2f} us, {group_us / file_us:.2f}x)")
        single.close()
        group.close()


if __name__ == "__main__":
    main()
