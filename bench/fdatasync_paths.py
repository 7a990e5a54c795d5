"""What a journal commit's fdatasync costs by how it is run from an asyncio loop (issue 14).

    .venv/bin/python bench/fdatasync_paths.py [N] [DIR]

A 64-byte append and fdatasync, N times each (default 300), interleaved: inline on the loop
thread, through the default executor (as daemon/secondary.py runs a commit), and through one
dedicated thread with a queue. Prints p50/p90/p99 of each. DIR (default: the current directory)
should be on the disk the metadata lives on.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any


class Worker:
    """One thread running submitted calls in order."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop,
                                           Callable[[], Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            future, loop, call = self.jobs.get()
            try:
                loop.call_soon_threadsafe(future.set_result, call())
            except Exception as exc:  # handed to the waiting coroutine
                loop.call_soon_threadsafe(future.set_exception, exc)

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((future, loop, call))
        return future


async def main(count: int, where: str) -> None:
    directory = tempfile.mkdtemp(dir=where)
    fd = os.open(os.path.join(directory, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def commit() -> None:
        os.write(fd, b"x" * 64)
        os.fdatasync(fd)

    loop, worker = asyncio.get_running_loop(), Worker()
    times: dict[str, list[float]] = {"inline": [], "executor": [], "thread": []}
    try:
        for _ in range(count):
            for how, samples in times.items():
                start = time.perf_counter()
                if how == "inline":
                    commit()
                elif how == "executor":
                    await loop.run_in_executor(None, commit)
                else:
                    await worker.submit(commit)
                samples.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.001)
    finally:
        os.close(fd)
        shutil.rmtree(directory)
    for how, samples in times.items():
        samples.sort()
        print(f"{how:9} p50 {statistics.median(samples):.3f} ms  p90 {samples[int(len(samples) * 0.9)]:.3f}"
              f"  p99 {samples[int(len(samples) * 0.99)]:.3f}  (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2] if len(sys.argv) > 2 else "."))
