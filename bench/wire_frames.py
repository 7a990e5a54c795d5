"""Encode and decode of 4 KiB WRITE frames on the link, in-process (link/wire.py's hot paths).

Encode: ``encode_frame_parts`` of COUNT plain 4 KiB WRITEs (what ``LinkProtocol.send`` calls per
host write), or with ``--batch N`` of WRITES frames of N writes each (``WriteBatch``). Decode: the encoded stream handed to a ``FrameDecoder`` the way the transport does,
256 KiB at a time through ``get_buffer``/``buffer_updated``, then ``next_messages``.

``--baseline PATH`` loads another wire.py (the tree before a change, e.g. a copy of
``git show BASE:src/foresync/link/wire.py``) as a second module and times it in the same run,
rounds interleaved, so both figures see the same load; the best round of each is printed.

Run: ``.venv/bin/python bench/wire_frames.py --count 100000 --rounds 5 [--baseline /tmp/wire_base.py]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from types import ModuleType
from typing import Any

from foresync.link import wire

CHUNK_BYTES = 256 * 1024


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("wire_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _encode(mod: Any, writes: list[Any], batch: int) -> tuple[float, bytes]:
    encode = mod.encode_frame_parts
    messages = writes
    if batch > 1:
        messages = [mod.WriteBatch(writes[i : i + batch]) for i in range(0, len(writes), batch)]
    start = time.perf_counter()
    parts = [encode(m) for m in messages]
    elapsed = time.perf_counter() - start
    return elapsed, b"".join(p for frame in parts for p in frame)


def _decode(mod: Any, stream: bytes, count: int) -> float:
    decoder = mod.FrameDecoder()
    got = 0
    view = memoryview(stream)
    start = time.perf_counter()
    pos = 0
    while pos < len(stream):
        buf = decoder.get_buffer()
        n = min(len(buf), len(stream) - pos)
        buf[:n] = view[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        got += len(decoder.next_messages())
    elapsed = time.perf_counter() - start
    assert got == count and decoder.failed is None, (got, decoder.failed)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="writes per WRITES frame (1: WRITE)")
    parser.add_argument("--baseline", help="another wire.py to time in the same run")
    args = parser.parse_args()
    modules: dict[str, Any] = {"current": wire}
    if args.baseline:
        modules = {"baseline": _load(args.baseline), "current": wire}
    data = bytes(range(256)) * 16  # 4 KiB
    best: dict[str, tuple[float, float]] = {name: (float("inf"), float("inf")) for name in modules}
    for _ in range(args.rounds):
        for name, mod in modules.items():
            writes = [mod.Write(seq, seq * 4096, 0, 0, (), data) for seq in range(1, args.count + 1)]
            enc, stream = _encode(mod, writes, args.batch)
            dec = _decode(mod, stream, args.count)
            best[name] = (min(best[name][0], enc), min(best[name][1], dec))
    what = "WRITE" if args.batch == 1 else f"write in WRITES of {args.batch}"
    for name, (enc, dec) in best.items():
        print(f"{name:9s} {args.count} x 4 KiB {what}: encode {enc * 1e6 / args.count:.3f} us/write "
              f"({enc:.3f} s), decode {dec * 1e6 / args.count:.3f} us/write ({dec:.3f} s)")


if __name__ == "__main__":
    main()
