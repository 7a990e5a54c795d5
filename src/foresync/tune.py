"""``foresync tune``: size and configure the record from a workload trace (the adapter).

It replays the trace through ``record/replay.py`` (the primary's own record, policy and
predictor code) for every eviction policy, extent size, lookahead and predictor whose record
fits the failback bound, prints what each would cost, draws the miss-ratio curve (miss ratio
against bound, one line per policy) in the terminal and as a PNG, and recommends a config.

Added latency is a round trip for each miss and each stall (a miss that waited for the durable
watermark); the IOPS ceiling is what QD writes in flight can reach when a miss holds its slot
for one round trip: QD / (miss ratio x RTT). Both leave out the local write and the link's
bandwidth, which async mode pays too.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from foresync.errors import ConfigError
from foresync.nbd import trace
from foresync.nbd.trace import TraceRecord
from foresync.record.predict import PREDICTORS
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, ReplayResult, replay
from foresync.units import format_size

EXTENT_SIZES = (4096, 16384, 65536, 262144, 1 << 20)
LOOKAHEADS = (0, 2, 4, 8, 16)
CAPACITY_MAX = 65535  # as config.py
CURVE_FACTORS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4)  # the bound's multiples on the curve


def writes_of(records: Iterable[TraceRecord]) -> list[tuple[float, int, int, bool]]:
    """(time s, offset, length, is data write) of each request that changes the volume."""
    return [(r.time_ns / 1e9, r.offset, r.length, r.command == 1) for r in records
            if r.writes and r.length > 0]


@dataclass(frozen=True, slots=True)
class Report:
    volume_size: int
    bound_bytes: int
    results: list[ReplayResult]  # every configuration at the bound, best first
    curve: dict[str, list[tuple[int, float]]]  # policy -> (bound, miss ratio), same extent etc.


def load_trace(path: str) -> tuple[int, list[tuple[float, int, int, bool]]]:
    """The volume size and the writes of a trace file (raw, .xz or .gz)."""
    try:
        if path.endswith(".xz"):
            with lzma.open(path) as f:
                data = f.read()
        elif path.endswith(".gz"):
            with gzip.open(path) as f:
                data = f.read()
        else:
            data = Path(path).read_bytes()
    except (OSError, lzma.LZMAError) as exc:
        raise ConfigError(f"cannot read the trace {path}: {exc}") from None
    volume_size, records = trace.decode(data, path)
    return volume_size, writes_of(records)


def _score(result: ReplayResult) -> tuple[bool, float, int, int, bool, bool]:
    # Never a configuration that would fail writes (blocked); then fewest misses and stalls;
    # then the larger extent (less to track), less lookahead, the default policy and the
    # simpler predictor.
    c = result.config
    return (result.blocked > 0, round(result.miss_ratio + result.stall_ratio, 5), -c.extent_size,
            c.lookahead, c.eviction is not Eviction.STREAMS, c.predictor != "next")


def sweep(volume_size: int, writes: list[tuple[float, int, int, bool]], bound_bytes: int,
          clean_lag_s: float, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Every policy x extent size at lookahead 4 (next), then every lookahead and predictor at
    the best extent size, then the curve for the best configuration of each policy."""
    results: list[ReplayResult] = []

    def run(extent_size: int, capacity: int, eviction: Eviction, lookahead: int, predictor: str) -> ReplayResult:
        result = replay(writes, volume_size, ReplayConfig(extent_size, capacity, eviction, lookahead,
                                                          predictor, clean_lag_s))
        progress(f"{eviction.value:12} extent {format_size(extent_size):>8} capacity {capacity:6} "
                 f"lookahead {lookahead:2} {predictor:8} miss {result.miss_ratio:7.2%}")
        return result

    sizes = [es for es in EXTENT_SIZES if 2 <= bound_bytes // es <= CAPACITY_MAX]
    if not sizes:
        raise ConfigError(f"--bound {bound_bytes}: no extent size gives 2 to {CAPACITY_MAX} extents")
    for extent_size in sizes:
        for eviction in Eviction:
            results.append(run(extent_size, bound_bytes // extent_size, eviction, 4, "next"))
    best_size = min(results, key=_score).config.extent_size
    for eviction in Eviction:
        for lookahead in LOOKAHEADS:
            for predictor in sorted(PREDICTORS):
                if (lookahead, predictor) != (4, "next"):
                    results.append(run(best_size, bound_bytes // best_size, eviction, lookahead, predictor))
    results.sort(key=_score)
    curve: dict[str, list[tuple[int, float]]] = {}
    for eviction in Eviction:
        best = min((r for r in results if r.config.eviction is eviction), key=_score).config
        points = []
        for factor in CURVE_FACTORS:
            capacity = int(bound_bytes * factor) // best.extent_size
            if 2 <= capacity <= CAPACITY_MAX:
                result = run(best.extent_size, capacity, eviction, best.lookahead, best.predictor)
                points.append((capacity * best.extent_size, result.miss_ratio))
        curve[eviction.value] = points
    return Report(volume_size, bound_bytes, results, curve)


def render_table(report: Report, rtt_s: float, qd: int, limit: int = 12) -> list[str]:
    lines = [f"{'eviction':12} {'extent':>8} {'capacity':>8} {'lookahead':>9} {'predictor':9} "
             f"{'miss':>7} {'stall':>7} {'+latency':>9} {'IOPS ceiling':>12}"]
    for result in report.results[:limit]:
        c = result.config
        ceiling = qd / (result.miss_ratio * rtt_s) if result.miss_ratio else float("inf")
        lines.append(f"{c.eviction.value:12} {format_size(c.extent_size):>8} {c.capacity:8} "
                     f"{c.lookahead:9} {c.predictor:9} {result.miss_ratio:7.2%} {result.stall_ratio:7.2%} "
                     f"{result.added_latency_s(rtt_s) * 1e3:7.2f}ms {ceiling:12,.0f}"
                     + (f"  {result.blocked} writes would fail: no room ever" if result.blocked else ""))
    return lines


def render_claims(report: Report) -> list[str]:
    """The best of each policy at the bound: the claimed ones against the default."""
    lines = []
    for eviction in Eviction:
        best = min((r for r in report.results if r.config.eviction is eviction), key=_score)
        lines.append(f"  best {eviction.value:12} miss {best.miss_ratio:7.2%}  (extent "
                     f"{format_size(best.config.extent_size)}, lookahead {best.config.lookahead}, "
                     f"{best.config.predictor})")
    return lines


def render_curve(report: Report, width: int = 50) -> list[str]:
    """The miss-ratio curve as text: one bar per policy at each bound."""
    top = max((m for points in report.curve.values() for _, m in points), default=0.0) or 1.0
    lines = [f"miss ratio against failback bound (bar: {top:.1%} = {width} columns)"]
    bounds = sorted({b for points in report.curve.values() for b, _ in points})
    for bound in bounds:
        lines.append(f"{format_size(bound):>9}" + ("  <- --bound" if bound == report.bound_bytes else ""))
        for policy, points in report.curve.items():
            ratio = dict(points).get(bound)
            if ratio is not None:
                lines.append(f"  {policy:12} {'#' * round(ratio / top * width):{width}} {ratio:7.2%}")
    return lines


def draw_png(report: Report, title: str, path: str) -> None:
    import matplotlib  # an optional dependency (pip install foresync[tune])

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for policy, points in report.curve.items():
        ax.plot([b / 2**20 for b, _ in points], [m * 100 for _, m in points], marker="o", label=policy)
    ax.axvline(report.bound_bytes / 2**20, color="grey", linestyle=":", label="--bound")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("failback bound (MiB) = capacity x extent size")
    ax.set_ylabel("miss ratio (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def size_text(n_bytes: int) -> str:
    """A size as config.py reads it: 256MiB, 64KiB, or bytes."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n_bytes and n_bytes % (1 << shift) == 0:
            return f"{n_bytes >> shift}{unit}"
    return str(n_bytes)


def recommend(report: Report) -> list[str]:
    best = report.results[0].config
    return ["[record]",
            f'bound = "{size_text(best.bound_bytes)}"',
            f'extent_size = "{size_text(best.extent_size)}"',
            f'eviction = "{best.eviction.value}"',
            f"lookahead = {best.lookahead}",
            f'predictor = "{best.predictor}"  # both sites']
