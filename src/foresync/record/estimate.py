"""The live miss-ratio curve: what the record would miss at 0.5x, 2x, 4x and 8x its capacity.

Theory of operation. DRBD users guess ``al-extents``; we measure. The primary feeds its host
writes to four shadow records, each a ``ReplayEngine`` (replay.py, the code ``foresync tune``
runs) with the live policy, extent size, lookahead and predictor, at a multiple of the live
capacity. Running them on every write would cost the write path more than the record itself,
so they see a spatial sample, as in SHARDS (Waldspurger et al., FAST 2015): a write goes to the
shadows only if its *region* (``REGION_EXTENTS`` consecutive extents, so sequential streams and
read-ahead stay whole) hashes below the sampling rate R, and each shadow's capacity is scaled by
R. A sampled region behaves in the shadow as it would in a full-size record, so the shadow's
miss ratio estimates the full one. R is the largest power-of-two fraction, 1/4 at most (the
shadows cost about 16 us a write they see), that leaves the smallest shadow ``SHADOW_MIN``
extents; and if a hot region drawn into the sample sends more than 1 write in
``FED_MAX_RATIO`` to the shadows, R is halved and the shadows start again, which bounds the
cost on the write path to about 2 us a write. A fifth shadow at 1x calibrates the others
against the live miss ratio (``estimates``).

Accuracy, measured against ``foresync tune`` on the trace suite (bench/workloads, 1-2 GiB
volumes, so few regions to sample; larger volumes have more): within 25% of the replayed miss
ratio at most points, but up to 3x off where the ratio is under 2% (docs/benchmarks.md). Treat
it as a sizing hint; ``foresync tune`` on a captured trace gives the exact figure.

Counts are halved every ``WINDOW`` sampled writes, so the estimate follows the workload of the
last few minutes rather than everything since the start.
"""

from __future__ import annotations

from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, ReplayEngine

FACTORS = (0.5, 2.0, 4.0, 8.0)
REGION_EXTENTS = 64
SHADOW_MIN = 64  # extents in the smallest shadow record, at least (when the record allows)
SHIFT_MIN = 2  # a quarter of the regions at most: five shadows cost ~16 us a write they see
SHIFT_MAX = 10  # a sample of 1/1024 at least
WINDOW = 200_000
# The write path's budget: when more than 1 write in FED_MAX_RATIO reaches the shadows (a hot
# region was drawn), the sample is halved and the shadows start again, so they cost about 2 us
# a host write on average at most, whatever the skew (16 us a write they see, measured).
FED_MAX_RATIO = 8
CHECK_EVERY = 4096  # host writes between checks of that budget
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash
_SALT = 0x5BD1E995  # added first, so that region 0 (often the hottest) is not always drawn


class MissRatioEstimator:
    def __init__(self, volume_size: int, extent_size: int, capacity: int, eviction: Eviction,
                 lookahead: int, predictor: str, clean_lag_s: float = 0.015) -> None:
        self.capacity = capacity
        self.extent_size = extent_size
        self._shadow_args = (volume_size, extent_size, eviction, lookahead, predictor, clean_lag_s)
        shift = SHIFT_MIN
        while shift < SHIFT_MAX and capacity * FACTORS[0] / (1 << (shift + 1)) >= SHADOW_MIN:
            shift += 1
        self._region_shift = (extent_size * REGION_EXTENTS).bit_length() - 1
        self._start(shift)

    def _start(self, shift: int) -> None:
        """Sample 1 region in 2**shift, with fresh shadows scaled to it."""
        volume_size, extent_size, eviction, lookahead, predictor, clean_lag_s = self._shadow_args
        self.shift = shift
        self._threshold = (1 << 32) >> shift
        self._shadows = {
            factor: ReplayEngine(volume_size, ReplayConfig(
                extent_size, max(2, round(self.capacity * factor) >> shift), eviction, lookahead,
                predictor, clean_lag_s))
            for factor in (1.0, *FACTORS)}
        self.sampled = 0
        self._seen = self._fed = 0

    def observe(self, now: float, offset: int, length: int, is_data: bool) -> None:
        """A host write (or zero/trim) arrived at ``now``."""
        self._seen += 1
        if self._seen >= CHECK_EVERY:
            if self._fed * FED_MAX_RATIO > self._seen and self.shift < SHIFT_MAX:
                self._start(self.shift + 1)
            self._seen = self._fed = 0
        if ((((offset >> self._region_shift) + _SALT) * _GOLDEN) & 0xFFFFFFFF) >= self._threshold:
            return
        self._fed += 1
        self.sampled += 1
        for shadow in self._shadows.values():
            shadow.write(now, offset, length, is_data)
        if self.sampled >= WINDOW:
            self.sampled //= 2
            for shadow in self._shadows.values():
                shadow.writes //= 2
                shadow.misses //= 2
                shadow.stalls //= 2

    def estimates(self, actual: float | None = None) -> dict[int, float]:
        """Capacity in extents -> estimated miss ratio (empty until a sampled write came).

        With ``actual`` (the live record's own miss ratio), each shadow's figure is scaled by
        actual / the 1x shadow's: the shadows share the sample's bias (which regions were
        drawn, and a small shadow's coarser grain), so their ratios to the 1x shadow carry
        less of it than their raw figures."""
        base = self._shadows[1.0]
        calibrate = actual is not None and base.misses > 0
        out: dict[int, float] = {}
        for factor, shadow in self._shadows.items():
            if factor == 1.0 or not shadow.writes:
                continue
            ratio = shadow.misses / shadow.writes
            if calibrate:
                assert actual is not None
                ratio = min(1.0, actual * shadow.misses / base.misses * base.writes / shadow.writes)
            out[max(1, round(self.capacity * factor))] = ratio
        return out


def advice(capacity: int, extent_size: int, miss_ratio: float | None, estimates: dict[int, float],
           target: float = 0.05) -> str:
    """One line for ``foresync status``: is the record too small, and what would fix it."""
    if miss_ratio is None:
        return "record: no writes yet to judge its size"
    now = f"record: {miss_ratio:.1%} of writes miss at capacity {capacity}"
    if not estimates:  # no sampled region yet: the ratio alone, and where to size it
        verdict = "big enough" if miss_ratio <= target else "too small"
        return f"{now}: {verdict} (no estimate for other capacities yet: foresync tune --trace)"
    if miss_ratio <= target:
        smaller = [c for c, m in estimates.items() if c < capacity and m <= target]
        hint = f" (capacity {min(smaller)} would too)" if smaller else ""
        return f"{now}: big enough{hint}"
    enough = sorted(c for c, m in estimates.items() if c > capacity and m <= target)
    if enough:
        c = enough[0]
        return (f"{now}: too small; capacity {c} ({c * extent_size >> 20} MiB failback bound) would "
                f"bring misses to {estimates[c]:.1%}")
    c = max(estimates)
    return (f"{now}: too small; even capacity {c} would miss {estimates[c]:.1%}: try another "
            f"extent_size or lookahead (foresync tune --trace)")
