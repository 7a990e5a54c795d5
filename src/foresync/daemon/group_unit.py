"""What a unit opens and serves: one volume's file, or a consistency group's members as one.

A volume's unit serves its file as one export. A group's unit (``SiteConfig.group``, issue 16
part 2) serves the ``GroupBackend`` over its member files, laid end to end at extent-aligned
bases (group_layout.py), and one export per member: a window of the unit at the member's base,
of the member's size (nbd/exports.py). The NBD core bounds each request by the export's size, so
no member's export reaches the padding or another member; a FLUSH on any of them flushes the
unit, every member (group_backend.py). Its HELLO carries each member's size, so a secondary
whose members differ (even within a last extent, which the padding hides from the unit's size)
refuses it (replication/admission.py).
"""

from __future__ import annotations

import os
from typing import Any

from foresync.config import SiteConfig
from foresync.group_layout import GroupSpec
from foresync.nbd.exports import ExportSpec
from foresync.storage.backend import ImageBackend
from foresync.storage.file_backend import FileBackend
from foresync.storage.group_backend import GroupBackend


def open_image(cfg: SiteConfig) -> ImageBackend:
    """The unit's image, created sparse where a file is missing (as FileBackend does)."""
    if cfg.group is None:
        return FileBackend(cfg.data, cfg.size)
    opened: list[FileBackend] = []
    try:
        for member in cfg.group.members:
            opened.append(FileBackend(member.data, member.size))
        return GroupBackend(cfg.group.layout(cfg.extent_size), opened)
    except BaseException:
        for backend in opened:
            backend.close()
        raise


def check_images(cfg: SiteConfig) -> None:
    """Refuse (ConfigError) an existing image file or device of another size, changing nothing:
    the volume's, or each member's of a group. A missing one is fine (init creates it)."""
    images = ([(cfg.data, cfg.size)] if cfg.group is None
              else [(member.data, member.size) for member in cfg.group.members])
    for data, size in images:
        if os.path.exists(data):
            FileBackend(data, size, create=False).close()


def exports_of(cfg: SiteConfig) -> list[ExportSpec]:
    if cfg.group is None:
        return [ExportSpec(cfg.export, 0, cfg.size)]
    layout = cfg.group.layout(cfg.extent_size)
    return [ExportSpec(volume.export, member.base, member.size)
            for volume, member in zip(cfg.group.members, layout.members, strict=True)]


def group_status(cfg: SiteConfig, exports: list[ExportSpec]) -> dict[str, Any]:
    """/status ``group``: the members, in the unit's order, with where each lies in it."""
    assert cfg.group is not None
    return {"members": [{"volume": volume.name, "export": spec.name, "base_bytes": spec.offset,
                         "size_bytes": spec.size, "data": volume.data}
                        for volume, spec in zip(cfg.group.members, exports, strict=True)]}


def group_members(group: GroupSpec | None) -> tuple[tuple[str, int], ...]:
    """The group's (member volume, size in bytes), in its order; () for a volume. The secondary
    compares them with its primary's HELLO (replication/admission.py ``member_problems``)."""
    return () if group is None else tuple((member.name, member.size) for member in group.members)
