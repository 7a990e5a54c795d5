"""An initial sync cut half-way resumes with what is left (issue 19).

The primary tells the secondary which extents a pass is done with (RESYNC_PROGRESS); the
secondary journals them out of its resync set once they are durable there. After the link comes
back its WELCOME offers only the rest (RESUME), and the secondary streams checksums of those
extents only: the pass neither sends nor compares again what already arrived. Real processes,
the link through the test proxies (cut both ways), 1 GiB of fresh data on the primary, the
resync held to ``resync_rate_max`` so that the cut lands in the middle whatever the box's load.
"""

from __future__ import annotations

import re

from .sites import MakePair, MiB, Settings, run_tool

DATA_BYTES = 1024 * MiB
RATE = "128MiB"  # about 8 s for the whole sync: the cut at half lands mid-pass


def _resync_bytes(pair_status: dict[str, object]) -> int:
    counters = pair_status["counters"]
    assert isinstance(counters, dict)
    return int(counters["resync_bytes"])


def test_an_initial_sync_cut_half_way_resumes_with_what_is_left(make_pair: MakePair) -> None:
    pair = make_pair(Settings(size="1GiB", capacity=64, resync_rate_max=RATE), via_proxy=True)
    pair.init_both()
    pair.start(pair.primary)
    run_tool(["qemu-io", "-f", "raw", "-c", f"write -P 0x3c 0 {DATA_BYTES}", pair.nbd_url],
             context=pair.logs())
    pair.start(pair.secondary)
    pair.wait_for("half the data sent",
                  lambda: _resync_bytes(pair.status(pair.primary)) >= DATA_BYTES // 2, timeout_s=120)
    pair.cut_link()
    pair.wait_link(pair.primary, "disconnected")
    before_cut = _resync_bytes(pair.status(pair.primary))
    assert before_cut < DATA_BYTES, "the sync finished before the cut"
    pair.restore_link()
    primary, secondary = pair.wait_in_sync(timeout_s=120)
    after_reconnect = _resync_bytes(primary) - before_cut
    # What arrived durably before the cut is neither sent nor compared again: well under the
    # whole (about half of it is left, plus the last second or so not yet durable there).
    assert after_reconnect <= 0.75 * DATA_BYTES, (before_cut, after_reconnect)
    assert secondary["consistent"] is True, secondary
    resumed = re.findall(r"streaming checksums of (\d+) extents for a full sync \(resumed pass\)",
                         pair.secondary.log())
    assert resumed, f"the pass did not resume:\n{pair.secondary.log()}"
    assert int(resumed[-1]) <= 0.75 * DATA_BYTES // MiB, resumed  # only what was left is compared
    print(f"sent {before_cut // MiB} MiB before the cut, {after_reconnect // MiB} MiB after; "
          f"resumed over {resumed[-1]} extents of {DATA_BYTES // MiB}")
    pair.stop_both()
    pair.assert_identical()
