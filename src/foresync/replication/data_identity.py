"""Which data file a site's metadata describes (pure): the recorded identity and the comparison.

Nothing else ties ``[volume] meta`` (site.json, the record journal, the out-of-sync file, the
undo log) to ``[volume] data``. Swap two volumes' ``data`` lines, restore the data from an old
backup, or mount another disk at the same /dev path, and the metadata would bound the
differences of a file it never saw: a secondary would report in sync while its copy differs.
So site.json records the data file's identity (daemon/data_file.py takes it from ``os.stat``):

* ``path``: its real path (``os.path.realpath``, symlinks resolved);
* ``dev``/``ino``: ``st_dev``/``st_ino`` of the file (of the device node for a block device);
* ``rdev``: ``st_rdev`` of a block device (0 for a regular file);
* ``size``: its size in bytes (a block device's, read by seeking to its end).

``mismatch`` says why a found identity may not be the recorded one ("" : the same). A regular
file compares path, dev, ino and size: a file restored by copy to the same path has a new inode
and differs (the safe side: the copy may be old). A block device compares path, rdev and size,
not its node's dev/ino, which /dev gets anew at every boot. Any difference means the metadata may
not describe this data: the daemon refuses that volume, or with ``--assume-all-out-of-sync``
takes every extent as in doubt (a full compare) and records the new identity.
"""

from __future__ import annotations

import os  # os.major/os.minor only: no I/O
from dataclasses import dataclass
from typing import Any

from foresync.faults import NO_FAULTS, Faults

FIELDS = ("path", "dev", "ino", "rdev", "size")


@dataclass(frozen=True, slots=True)
class DataIdentity:
    path: str  # os.path.realpath of [volume] data
    dev: int
    ino: int
    rdev: int  # st_rdev of a block device, 0 for a regular file
    size: int  # bytes

    @property
    def block_device(self) -> bool:
        return self.rdev != 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "rdev": self.rdev,
                "size": self.size}

    @staticmethod
    def from_json(doc: object) -> DataIdentity:
        """Raises ValueError for a document that is not one."""
        if not isinstance(doc, dict) or not all(key in doc for key in FIELDS):
            raise ValueError(f"not an identity: {doc!r}")
        if not isinstance(doc["path"], str) or not all(
                isinstance(doc[key], int) and not isinstance(doc[key], bool) for key in FIELDS[1:]):
            raise ValueError(f"not an identity: {doc!r}")
        return DataIdentity(doc["path"], doc["dev"], doc["ino"], doc["rdev"], doc["size"])

    def describe(self) -> str:
        node = (f"block device {os.major(self.rdev)}:{os.minor(self.rdev)}" if self.block_device
                else f"device {os.major(self.dev)}:{os.minor(self.dev)} inode {self.ino}")
        return f"{self.path} ({node}, {self.size} bytes)"


def mismatch(recorded: DataIdentity, found: DataIdentity | None, faults: Faults = NO_FAULTS) -> str:
    """Why ``found`` may not be the data ``recorded`` describes; "" if it is the same file."""
    if faults.data_identity_ignored:  # deliberate bug: any data file is taken as the recorded one
        return ""
    if found is None:
        return "the data file does not exist"
    differ = []
    if found.path != recorded.path:
        differ.append("real path")
    if found.block_device != recorded.block_device:
        differ.append("file type")
    elif found.block_device:
        if found.rdev != recorded.rdev:
            differ.append("block device number")
    else:
        if found.dev != recorded.dev:
            differ.append("device")
        if found.ino != recorded.ino:
            differ.append("inode")
    if found.size != recorded.size:
        differ.append("size")
    return "" if not differ else "it differs in " + ", ".join(differ)
