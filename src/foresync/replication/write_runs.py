"""Adjacent WRITEs of one receive pass, held by the secondary's core and written as one.

Theory of operation (issue 15). The link decoder hands the secondary every frame one read
completed, and a sequential stream brings several WRITEs per read, each starting where the one
before it ended. Written one by one they cost a ``pwrite`` each (1.44-1.52 us per 4 KiB on this
box); as one ``os.pwritev`` 0.88-0.91 us each (8 adjacent 4 KiB writes, docs/benchmarks.md).

The core (``SecondaryCore.write_now``, the hot path) holds such writes in a run instead of handing
each to the adapter at once. A held write is not applied: it counts (``applied_seq``,
APPLIED, the watermark) only when the run ends and leaves the core, in order, ahead of anything
that depends on it:

* a write that does not start where the run ends (or would make it longer than
  ``RUN_MAX_WRITES`` / ``RUN_MAX_BYTES``) ends the run, which ``write_now`` returns to the driver
  to write at once, and starts the next one: runs are written in arrival order, so an
  overlapping later write always lands after the earlier one;
* the end of the pass (``SecondaryDriver.end_of_batch``) takes it the same way
  (``end_of_batch_run``), before the core reports APPLIED;
* any other input of the core (``receive``, ``end_of_batch``, ``actions``, a commit, a sync, the
  timer, a new session) ends it first, as a ``WriteData`` or ``WriteRun`` action ahead of the
  actions that input makes;
* a storage failure drops it, and its extents are reported stale, as any write not carried out.

So the adapter never decides what is combined, and the simulator drives the same rule.
"""

from __future__ import annotations

from foresync.link import wire
from foresync.replication.actions import WriteData, WriteRun

# Bounds on one run: far under IOV_MAX (1024) buffers, and what one receive pass of 4 KiB writes
# brings (a 256 KiB read holds about 60 frames). Larger writes gain nothing from sharing a call.
RUN_MAX_WRITES = 64
RUN_MAX_BYTES = 1 << 20


def as_action(writes: list[wire.Write]) -> WriteData | WriteRun:
    """The action that writes a run: one write as a plain ``WriteData``."""
    if len(writes) == 1:
        (write,) = writes
        return WriteData(write.offset, write.data, write.seq)
    return WriteRun(tuple(writes))

