"""The record: the persistent set of extents the primary is likely to write soon (claims 1, 9-19)."""
