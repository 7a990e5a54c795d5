"""Which extents to add to the record on a miss (claims 18-19).

A host that writes extent e is likely to write e+1, e+2, ... next (sequential streams, journals,
log-structured filesystems), so a miss adds the extents it touches plus the next ``lookahead``
consecutive ones, clamped to the volume.
"""

from __future__ import annotations


def extents_of(offset: int, length: int, extent_size: int) -> range:
    """The extent indexes a byte range touches (an empty range touches none)."""
    if length <= 0:
        return range(0)
    return range(offset // extent_size, (offset + length - 1) // extent_size + 1)


def predict(touched: range, lookahead: int, extent_count: int) -> range:
    """The ``lookahead`` extents after the last touched one, clamped to the volume."""
    start = touched.stop
    return range(start, min(start + lookahead, extent_count))
