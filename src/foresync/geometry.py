"""Block geometry shared by every layer: extents as the storage reports them.

``Extent`` is one run of the allocation status that BLOCK_STATUS reports: (length in bytes,
``AllocationFlag`` bits). It lives here, below both ``nbd`` and ``storage``, so neither imports the
other: the NBD server asks the storage for extents, and the storage answers in these terms.
"""

from __future__ import annotations

from enum import IntFlag


class AllocationFlag(IntFlag):
    """Status bits of the ``base:allocation`` metadata context."""

    HOLE = 1 << 0
    ZERO = 1 << 1


Extent = tuple[int, int]  # (length in bytes, AllocationFlag bits)
