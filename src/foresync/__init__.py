"""foresync: look-ahead block-volume mirroring between two sites, served over NBD."""

__version__ = "0.1.0"
