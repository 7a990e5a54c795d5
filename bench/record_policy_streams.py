"""The default policy (``streams``) and its variants against the claimed policies (issue 14).

    .venv/bin/python bench/record_policy_streams.py [NAME ...]
    .venv/bin/python bench/record_policy_streams.py --cost     # note_write's cost a write, per policy

The rows of docs/benchmarks.md's policy table (every trace of bench/workloads at 1/16 and 1/4 of
its volume, 1 MiB and 64 KiB extents, lookahead 4, predictor next: bench/record_policies.py's
replay, 15 ms clean lag). First the table of the committed policy (lru, generations, s3fifo,
adaptive, streams, and streams' change against the better claimed policy); then, for each
variant of record/streams.py and record/adaptive.py's constants (VARIANTS below, or the NAMEs
given), the rows where it misses more than the better claimed policy and the traces where it
misses at least 25% less. The variants are there to show the committed constants are not the
one lucky point of the grid: see docs/benchmarks.md.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from _policy_rows import Tally, Traces  # bench/_policy_rows.py: bench/ is on sys.path as a script

from foresync.record import adaptive, streams
from foresync.record.record import Eviction, RecordCopy


def _set(**values: object) -> Callable[[], None]:
    def apply() -> None:
        for name, value in values.items():
            module = streams if hasattr(streams, name) else adaptive
            setattr(module, name, value)
        adaptive._DECAY = 0.5 ** (1 / adaptive.WINDOW)
    return apply


def _s3_alone() -> None:
    streams.Streams.following_lru = lambda self: False  # type: ignore[method-assign]


COMMITTED = {"STREAMS_TRACKED": streams.STREAMS_TRACKED, "PASSED_TO_HAND": streams.PASSED_TO_HAND,
             "WINDOW": adaptive.WINDOW, "MARGIN": adaptive.MARGIN, "EXPLORE": adaptive.EXPLORE}
VARIANTS: dict[str, Callable[[], None]] = {
    "committed": _set(),
    "streams-4": _set(STREAMS_TRACKED=4),
    "streams-64": _set(STREAMS_TRACKED=64),
    "counter-only": _set(PASSED_TO_HAND=False),
    "window-1024": _set(WINDOW=1024),
    "window-16384": _set(WINDOW=16384),
    "margin-0.1": _set(MARGIN=0.1),
    "margin-0.5": _set(MARGIN=0.5),
    "explore-16": _set(EXPLORE=16),
    "explore-256": _set(EXPLORE=256),
    "s3fifo-expert-alone": _s3_alone,
    "s3fifo-expert-alone-counter-only": lambda: (_s3_alone(), _set(PASSED_TO_HAND=False)()),
}


def cost(rounds: int = 5) -> None:
    """``RecordCopy.note_write`` (the write path's share of the policy) per policy, in us a
    write: 200,000 writes of 4 KiB, half continuing the last one, on a full record of 1024 x
    1 MiB; the best of ``rounds`` rounds, the policies interleaved so they share the box's load."""
    rng, end, ops = random.Random(1), 0, []
    for _ in range(200_000):
        offset = end if rng.random() < 0.5 else rng.randrange(1 << 30) // 4096 * 4096
        ops.append((range(offset >> 20, ((offset + 4095) >> 20) + 1), offset))
        end = offset + 4096
    best: dict[Eviction, float] = {}
    for _ in range(rounds):
        for policy in Eviction:
            record = RecordCopy(1024, policy, extent_size=1 << 20)
            record.add(range(1024))
            note_write, start = record.note_write, time.perf_counter()
            for seq, (extents, offset) in enumerate(ops, 1):
                note_write(extents, seq, offset, 4096)
            spent = (time.perf_counter() - start) / len(ops) * 1e6
            best[policy] = min(best.get(policy, spent), spent)
    print(" ".join(f"{p.value} {us:.2f} us" for p, us in best.items()))


def main(argv: list[str]) -> None:
    if argv == ["--cost"]:
        cost()
        return
    traces = Traces()
    fixed = {row: {p: traces.miss_ratio(row, p)
                   for p in (Eviction.LRU, Eviction.GENERATIONS, Eviction.S3FIFO, Eviction.ADAPTIVE)}
             for row in traces.rows()}
    following = streams.Streams.following_lru
    for variant in argv or list(VARIANTS):
        streams.Streams.following_lru = following  # type: ignore[method-assign]
        _set(**COMMITTED)()
        VARIANTS[variant]()
        if variant == "committed":
            print("| trace | bound | extent | lru | generations | s3fifo | adaptive | **streams** | vs best claimed |\n"
                  "|---|---|---|--:|--:|--:|--:|--:|--:|")
        tally = Tally()
        for row, ratios in fixed.items():
            name, fraction, es = row
            ratio = traces.miss_ratio(row, Eviction.STREAMS)
            best = min(ratios[Eviction.LRU], ratios[Eviction.GENERATIONS])
            change = tally.note(row, ratio, best)
            if variant == "committed":
                print(f"| {name} | 1/{fraction} | {es >> 10} KiB | {ratios[Eviction.LRU]:.2%} "
                      f"| {ratios[Eviction.GENERATIONS]:.2%} | {ratios[Eviction.S3FIFO]:.2%} "
                      f"| {ratios[Eviction.ADAPTIVE]:.2%} | **{ratio:.2%}** | {change:+.0%} |", flush=True)
        print(f"{variant}: {tally.summary()}", flush=True)

if __name__ == "__main__":
    main(sys.argv[1:])
