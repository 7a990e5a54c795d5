"""The primary's out-of-sync store, ``<meta>/oos.json``: its format, and the policy for a lost one.

The out-of-sync set holds the extents the secondary may lack that its record may not cover (a
write finished here while the link was down, a failback set, what an old primary handed over).
Losing it, or reading it wrong, would let the primary report in sync while the copies differ
(issue 12), so the file carries a checksum, every number is checked against the volume, and a
primary whose store is missing treats every extent as out of sync (``restore``).

Format 2, one JSON object on one line (written atomically: temporary file, fsync, rename)::

    {"crc32c": 1234, "everything": false, "format": 2, "runs": [[first, count], ...]}

- ``runs``: the extents as sorted, disjoint runs of consecutive extent numbers, each with
  ``count >= 1`` and ``first + count`` at most the volume's extent count (a whole volume is one
  run, so even a huge set stays small);
- ``everything``: every extent may differ besides the runs (the set was lost, or this primary was
  promoted from a copy whose metadata was damaged): the next connect copies the whole volume,
  and only a finished pass clears it;
- ``crc32c``: the CRC32C of the canonical JSON of the other three keys (``json.dumps`` with
  ``sort_keys=True, separators=(",", ":")``), so a flipped digit is caught, not trusted.

Format 1 (before issue 12) is a plain JSON list of extent numbers, ``[3, 17]``. It is still read
(an upgrade) with the same range checks; it is no longer written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from foresync.faults import NO_FAULTS, Faults
from foresync.journal.format import crc32c

FORMAT = 2


@dataclass(frozen=True, slots=True)
class OutOfSync:
    extents: frozenset[int]
    everything: bool = False


def runs_of(extents: set[int] | frozenset[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for extent in sorted(extents):
        if runs and runs[-1][0] + runs[-1][1] == extent:
            runs[-1][1] += 1
        else:
            runs.append([extent, 1])
    return runs


def _canonical(everything: bool, runs: list[list[int]]) -> bytes:
    doc = {"everything": everything, "format": FORMAT, "runs": runs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def encode(extents: set[int] | frozenset[int], everything: bool = False) -> str:
    runs = runs_of(extents)
    doc = {"crc32c": crc32c(_canonical(everything, runs)), "everything": everything,
           "format": FORMAT, "runs": runs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _extent(value: object, extent_count: int | None) -> int:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"{json.dumps(value)} is not an extent number")
    assert isinstance(value, int)
    if extent_count is not None and value >= extent_count:
        raise ValueError(f"it holds extent {value}, but the volume has only {extent_count} extents")
    return value


def decode(text: str, extent_count: int | None) -> OutOfSync:
    """Parse and check a stored out-of-sync set; ValueError says what is wrong. ``extent_count``
    None skips the range check (`inspect`, which has no config)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if isinstance(doc, list):  # format 1
        return OutOfSync(frozenset(_extent(value, extent_count) for value in doc))
    if not isinstance(doc, dict):
        raise ValueError(f"it holds {json.dumps(doc)[:40]}, not a format-{FORMAT} object or a list "
                         "of extent numbers")
    if doc.get("format") != FORMAT or set(doc) != {"crc32c", "everything", "format", "runs"}:
        raise ValueError(f"not a format-{FORMAT} out-of-sync object (keys {sorted(doc)})")
    everything, runs, crc = doc["everything"], doc["runs"], doc["crc32c"]
    if not isinstance(everything, bool) or not isinstance(runs, list) or not _is_int(crc):
        raise ValueError("a key holds the wrong type")
    extents: set[int] = set()
    end = 0
    for run in runs:
        if not isinstance(run, list) or len(run) != 2 or not all(_is_int(v) for v in run) or run[1] < 1:
            raise ValueError(f"run {json.dumps(run)[:40]} is not [first, count]")
        first = _extent(run[0], extent_count)
        _extent(first + run[1] - 1, extent_count)
        if first < end:
            raise ValueError(f"run {run} overlaps or precedes the one before it")
        end = first + run[1]
        extents.update(range(first, end))
    if crc32c(_canonical(everything, runs)) != crc:
        raise ValueError("it fails its CRC32C (damaged, or edited by hand)")
    return OutOfSync(frozenset(extents), everything)


def restore(found: OutOfSync | None, faults: Faults = NO_FAULTS) -> OutOfSync:
    """What a primary may believe at start: the stored set, or for a missing store (a primary
    always has one once initialised) every extent. Shared by the daemon and the simulator."""
    if found is not None:
        return found
    if faults.missing_metadata_taken_as_empty:
        return OutOfSync(frozenset())
    return OutOfSync(frozenset(), everything=True)
