"""What a trace's flushes and its inherent misses allow lookahead to reach (issue 14).

The bench replays a trace (``record_pair.replay_trace``) as an application's filesystem sends
it: in order, at most QD requests in flight, a FLUSH only once everything before it has been
answered and the next request only after the FLUSH is sent. sqlite flushes once every 5.3
changes, so it writes in small batches, and a batch with a miss cannot end before the miss's
ADDED. Worse, its misses come in runs of writes to the same few extents: the writes behind a
miss (its own extent, or one its ADDED will bring) wait for that ADDED, and once QD of them
wait the client can send nothing more, so the next miss of the batch goes only a round trip
later. Neither is the miss path's doing: no miss path can answer a miss before its round trip.

This replays the bench's prefix of a trace through the real record code (``record/replay.py``'s
``ReplayEngine``: the primary's record, eviction policy and predictor, as ``foresync tune``
replays them) inside a small simulation of that client, kind to lookahead everywhere else:

* each request takes its share of async mode's time to send (``client_steps``: so the
  simulation without misses takes exactly async mode's time, and a large write longer than a
  small one), and a hit is answered at once;
* a miss is answered exactly one RTT after it is sent (no journal commit, no loaded box), and
  the extents its ADDED brings (its own and the predicted ones) are pending until then: a write
  touching one starts only then (as a hit, or as a miss if it also touches extents nobody
  brings), not before (the replay itself counts it as a hit);
* a read-ahead (a sequential hit near the record's edge, sent as a MISS whose budget extends
  the record ahead of the stream) is answered at once, but the extents it brings are pending
  for one RTT too, like a miss's: a stream that covers more than the read-ahead's reach (up to
  ``lookahead`` extents ahead) in one round trip waits for it. Before, the bound added them at
  once, and so said 0.98 for the build trace at 1/4, which measured 0.6-0.67 on the pair: most
  of build's waits are behind read-aheads (65 read-aheads beside 9 misses in one run, 82 writes
  behind their ADDs);
* a RANGE op (a zero or trim over more than ``min(16, capacity // 2)`` extents, which never
  goes through the record) is answered one trip after it is sent at the earliest: the
  secondary journals it and answers, and only then does the primary apply it; both sites then
  zero at once, one op after another, and the primary's zeroing is not charged (async mode
  does it too). Until issue 14's EARLY_RANGES the secondary answered only once its zeroing was
  durable, so the primary zeroed after it: ``--zero-before-answer`` models that, with
  ``--zero-rate`` the secondary's zeroing speed (punching a 128 MiB range of the prefilled
  image took 40-80 ms on this box, about 2 GB/s). Build's eight 96-128 MiB trims cost
  lookahead so about 0.6 s of a run async does in 1.1-1.4 s (measured per op,
  docs/benchmarks.md);
* at most QD requests in flight; a FLUSH waits for all of them and is answered at once.

``--trip-ms`` replaces the RTT as what a MISS takes to its ADDED: the pair's measured
MISS-to-ADDED mean (``record_miss_round_trip_s`` / ``record_misses_answered``), which on a
loaded box is about twice the RTT for build; the bound at the RTT is the inherent one, the
bound at the measured trip what that trip allows.

So the simulated time is a lower bound for lookahead's time on the pair, and async time / it an
upper bound for lookahead / async throughput. The replay's clock (when a write turns clean) is
the simulation's. A stall (a miss that found no clean slot and waited for the watermark) is
counted but not charged.

    .venv/bin/python bench/flush_bound.py --trace sqlite --async-rate 5587 --rtt-ms 12.4
    .venv/bin/python bench/flush_bound.py --trace sqlite --tune   # and tune's best at each bound
    .venv/bin/python bench/flush_bound.py --trace build --async-rate 1400 --trip-ms 25 --zero-rate 2GB --zero-before-answer

No daemons: seconds per configuration (``--tune``: one ``foresync tune`` sweep per bound,
minutes).
"""

from __future__ import annotations

import argparse
import heapq
import lzma
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from foresync.nbd import trace
from foresync.record.predict import extents_of
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, ReplayEngine
from foresync.tune import sweep
from foresync.units import parse_size

HERE = Path(__file__).parent
CHANGES = (trace.WRITE, trace.TRIM, trace.WRITE_ZEROES)


@dataclass(frozen=True, slots=True)
class Simulated:
    config: ReplayConfig
    requests: int  # writes, zeroes, trims and flushes replayed
    writes: int  # of which through the record
    misses: int
    behind_add: int  # writes that waited for the ADDED of a miss in flight
    stalls: int
    batches: int  # runs of requests between FLUSHes
    missing: int  # batches with at least one miss
    seconds: float  # the simulated time
    async_seconds: float  # requests / async rate

    @property
    def bound(self) -> float:
        """The most lookahead / async throughput can be on this prefix."""
        return self.async_seconds / self.seconds if self.seconds else 1.0


def load(path: Path, limit: int) -> tuple[int, list[trace.TraceRecord]]:
    """The volume size and the first ``limit`` changes and flushes (0: all), as the bench."""
    size, records = trace.decode(lzma.decompress(path.read_bytes()), str(path))
    kept = [r for r in records if r.command in (*CHANGES, trace.FLUSH)]
    return size, kept[:limit] if limit else kept


def simulate(size: int, records: Sequence[trace.TraceRecord], config: ReplayConfig, qd: int,
             async_rate: float, rtt_s: float, trip_s: float | None = None,
             zero_bytes_per_s: float = 0.0, zero_before_answer: bool = False) -> Simulated:
    """The client of the module docstring, with the record of ``config`` deciding each write.

    ``trip_s`` is what a MISS (a miss's or a read-ahead's) takes to its ADDED: one RTT unless
    given (the pair's measured MISS-to-ADDED mean, to see what that trip allows).
    ``zero_bytes_per_s`` is how fast the secondary zeroes (punches) RANGE ops, one after
    another (0: at once), and ``zero_before_answer`` whether it answers each only after its
    own zeroing (before issue 14's EARLY_RANGES) or before it."""
    engine = ReplayEngine(size, config)
    record = engine.record
    trip = rtt_s if trip_s is None else trip_s
    zeroing_until = 0.0  # when the secondary is done with the RANGE ops it has
    pending: dict[int, float] = {}  # extent -> when the ADDED bringing it arrives
    inflight: list[float] = []  # answer times of the requests in flight (a heap)
    steps = client_steps(records, async_rate, zero_bytes_per_s)
    now = 0.0
    behind = batches = missing = 0
    opened = missed = False
    for r, step in zip(records, steps, strict=True):
        if len(inflight) >= qd:
            now = max(now, heapq.heappop(inflight))
        now += step
        if r.command == trace.FLUSH:
            now = max([now, *inflight])
            inflight.clear()
            batches += opened
            missing += missed
            opened = missed = False
            continue
        opened = True
        # A write to an extent an ADDED in flight brings (a miss's or a read-ahead's) starts
        # only once it came: as a hit, or, if it also touches extents nobody brings, as a miss
        # then; a sequential one sends its own read-ahead only then, too.
        touched = extents_of(r.offset, r.length, config.extent_size) if r.length else range(0)
        start = max([now, *(pending.get(e, 0.0) for e in touched)])
        before = set(record.extents())
        read_aheads = engine.read_aheads
        verdict = engine.write(now, r.offset, r.length, r.command == trace.WRITE) if r.length else None
        answer = start
        if verdict is None and r.length and r.command != trace.WRITE:
            # A RANGE op: the secondary answers it once journaled, then zeroes it, in order
            # behind the zeroing of the RANGE ops before it; only then may the primary apply it
            # (design.md, "Large zero and trim: RANGE ops").
            if zero_before_answer:
                zeroing_until = max(zeroing_until, start + trip / 2)
                zeroing_until += r.length / zero_bytes_per_s if zero_bytes_per_s else 0.0
                answer = zeroing_until + trip / 2
            else:
                # Both sites zero at once, each one op after another: the primary's zeroing of
                # the next op waits for its ADDED, which follows the secondary's zeroing of this
                # one, at the same pace. async mode pays the primary's zeroing too, so only the
                # trip is charged.
                answer = start + trip
        if verdict:
            missed = True
            answer = start + trip
        elif verdict is False and start > now:
            behind += 1
        if verdict or engine.read_aheads > read_aheads:
            for extent in set(record.extents()) - before:
                pending[extent] = start + trip  # a read-ahead's host write does not wait for it
        heapq.heappush(inflight, answer)
    now = max([now, *inflight])
    batches += opened
    missing += missed
    result = engine.result()
    return Simulated(config, len(records), result.writes, result.misses, behind, result.stalls,
                     batches, missing, now, len(records) / async_rate)


def client_steps(records: Sequence[trace.TraceRecord], async_rate: float,
                 zero_bytes_per_s: float = 0.0) -> list[float]:
    """The client's time to send each request: async mode's time (requests / ``async_rate``),
    shared in proportion to the larger of an average request's time and the request's payload
    at async mode's average byte rate. So a 1 MiB write of a stream takes what it would in
    async mode, not as long as an 8 KiB one: with equal shares pgbench's 1 MiB streams ran at
    3 GB/s in the model and waited behind every read-ahead. With ``zero_bytes_per_s`` a zero or
    trim first takes its zeroing (the primary zeroes on its event loop, in async mode too:
    build's trims are a third of its async run), and the rest is shared among the others."""
    total_s = len(records) / async_rate
    zeroing = [r.length / zero_bytes_per_s if zero_bytes_per_s and r.command in (trace.TRIM, trace.WRITE_ZEROES)
               else 0.0 for r in records]
    left_s = max(total_s - sum(zeroing), total_s / 10)
    payload = [r.length if r.command == trace.WRITE else 0 for r in records]
    byte_rate = sum(payload) / left_s if left_s else 0.0
    raw = [0.0 if z else max(1 / async_rate, n / byte_rate if byte_rate else 0.0)
           for z, n in zip(zeroing, payload, strict=True)]
    scale = left_s / sum(raw) if sum(raw) else 1.0
    return [z + s * scale for z, s in zip(zeroing, raw, strict=True)]


def describe(config: ReplayConfig) -> str:
    return (f"{config.capacity} x {config.extent_size // 1024} KiB, {config.eviction.value}, "
            f"lookahead {config.lookahead}, {config.predictor}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trace", default="sqlite", help="a bench/workloads trace (default sqlite)")
    parser.add_argument("--requests", type=int, default=20000,
                        help="the prefix the bench replays (default 20000; 0: all)")
    parser.add_argument("--fractions", type=int, nargs="+", default=[16, 8, 4],
                        help="record bounds as volume fractions (default 16 8 4)")
    parser.add_argument("--async-rate", type=float, default=5587.0,
                        help="async requests/s of the same prefix (default: 5,587, measured at load 2)")
    parser.add_argument("--rtt-ms", type=float, default=12.4, help="link round trip (default 12.4)")
    parser.add_argument("--trip-ms", type=float, default=None,
                        help="what a MISS takes to its ADDED (default: one RTT)")
    parser.add_argument("--lookahead", type=int, default=4, help="the default record's lookahead (4)")
    parser.add_argument("--zero-rate", type=parse_size, default=0, metavar="BYTES_PER_S",
                        help="how fast the secondary zeroes RANGE ops (e.g. 2GB; default 0: at once)")
    parser.add_argument("--zero-before-answer", action="store_true",
                        help="the secondary answers a RANGE op only after zeroing it (before EARLY_RANGES)")
    parser.add_argument("--qd", type=int, default=16, help="requests in flight, as the bench (16)")
    parser.add_argument("--tune", action="store_true",
                        help="also run foresync tune's sweep on the prefix at each bound and bound its best")
    args = parser.parse_args(argv)
    size, records = load(HERE / "workloads" / f"{args.trace}.fstrace.xz", args.requests)
    rtt_s = args.rtt_ms / 1e3
    lag_s = rtt_s + 0.005  # a write turns clean a round trip and an fdatasync after it is sent
    flushes = sum(1 for r in records if r.command == trace.FLUSH)
    print(f"{args.trace}: {len(records):,} requests ({flushes:,} FLUSHes, one per "
          f"{(len(records) - flushes) / max(flushes, 1):.1f} changes), volume {size >> 20} MiB; "
          f"async {args.async_rate:,.0f} req/s, RTT {args.rtt_ms} ms, a MISS to its ADDED "
          f"{args.rtt_ms if args.trip_ms is None else args.trip_ms} ms, QD {args.qd}")
    print("\n| bound | record | writes | miss | behind an ADD | stalls | batches with a miss "
          "| simulated s (async s) | **bound on lookahead / async** |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for fraction in args.fractions:
        bound = size // fraction
        configs = [("default", ReplayConfig(1 << 20, bound >> 20, Eviction.STREAMS, args.lookahead,
                                            "next", lag_s))]
        if args.tune:
            report = sweep(size, [(r.time_ns / 1e9, r.offset, r.length, r.command == trace.WRITE)
                                  for r in records if r.command in CHANGES and r.length > 0],
                           bound, lag_s)
            configs.append(("tune's best", report.results[0].config))
        for label, config in configs:
            s = simulate(size, records, config, args.qd, args.async_rate, rtt_s,
                         None if args.trip_ms is None else args.trip_ms / 1e3, args.zero_rate,
                         args.zero_before_answer)
            print(f"| 1/{fraction} | {label}: {describe(config)} | {s.writes:,} | "
                  f"{s.misses / max(s.writes, 1):.2%} | {s.behind_add:,} | {s.stalls:,} | "
                  f"{s.missing:,} of {s.batches:,} | {s.seconds:.2f} ({s.async_seconds:.2f}) | "
                  f"**{s.bound:.2f}** |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
