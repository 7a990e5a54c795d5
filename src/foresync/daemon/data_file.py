"""The data file's identity at a start: found with ``os.stat``, checked against site.json.

The comparison is pure (replication/data_identity.py, which says what is recorded and why).
Here: ``found`` stats the file; ``check`` runs before the data file is opened (or created, for a
typo in ``data``) and refuses a volume whose data is not the recorded file; ``reconcile`` runs
once it is open and gives the identity to record: the first start of metadata from before
identities (logged, not refused), or a start with ``--assume-all-out-of-sync`` after a change.
"""

from __future__ import annotations

import logging
import os
import stat

from foresync import config as config_mod
from foresync.daemon import metadata as site
from foresync.errors import ConfigError
from foresync.replication.data_identity import DataIdentity, mismatch

log = logging.getLogger(__name__)


def found(path: str) -> DataIdentity | None:
    """The identity of the data file at ``path`` now; None if there is none."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot stat volume {path}: {exc.strerror or exc}") from None
    if not stat.S_ISBLK(st.st_mode):
        return DataIdentity(real, st.st_dev, st.st_ino, 0, st.st_size)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open volume {path}: {exc.strerror or exc}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    return DataIdentity(real, st.st_dev, st.st_ino, st.st_rdev, size)


def _files(cfg: config_mod.SiteConfig) -> list[tuple[str, str]]:
    """(who, data path) of every data file the unit's metadata describes: a volume's one, a
    consistency group's members in order (site.json's data_identity, then member_identities)."""
    if cfg.group is None:
        return [(f"volume {cfg.name}", cfg.data)]
    return [(f"group {cfg.name}, member volume {m.name}", m.data) for m in cfg.group.members]


def _recorded(files: list[tuple[str, str]], meta: site.SiteMeta) -> list[DataIdentity | None]:
    """The recorded identity of each of ``files`` (the caller's ``_files``); None where none is
    recorded (metadata from before identities, or a group's from before member identities)."""
    count = len(files)
    recorded: list[DataIdentity | None] = [meta.data_identity]
    recorded += list(meta.member_identities[:count - 1])
    return recorded + [None] * (count - len(recorded))


def refusal(cfg: config_mod.SiteConfig, recorded: DataIdentity, now: DataIdentity | None,
            why: str, who: str = "", data: str = "") -> ConfigError:
    who, data = who or f"volume {cfg.name}", data or cfg.data
    seen = now.describe() if now is not None else f"nothing at {os.path.realpath(data)}"
    return ConfigError(
        f"{who}: key `data` = {data} in {cfg.path} is not the data file this "
        f"site's metadata in {cfg.meta} describes ({why}): recorded {recorded.describe()}, found "
        f"{seen}. Its record and out-of-sync set cannot bound where this data differs from the "
        "peer's. Either put the right file back at that path (or correct `data`), or start once "
        "with `foresync run --assume-all-out-of-sync`: every extent is then in doubt (a full "
        "compare) and the new data file's identity is recorded")


def check(cfg: config_mod.SiteConfig, assume_all: bool) -> None:
    """Refuse the volume before its data file is opened if it is not the recorded one (a
    group: if any member's is not)."""
    meta = site.load(cfg.meta)
    files = _files(cfg)
    for (who, data), recorded in zip(files, _recorded(files, meta), strict=True):
        if recorded is None:
            continue
        now = found(data)
        why = mismatch(recorded, now)
        if not why:
            continue
        if not assume_all:
            raise refusal(cfg, recorded, now, why, who, data)
        log.warning("%s: `data` = %s is not the recorded data file (%s); started with "
                    "--assume-all-out-of-sync: every extent is in doubt, the new identity is "
                    "recorded", who, data, why)


def reconcile(cfg: config_mod.SiteConfig, meta: site.SiteMeta, assume_all: bool) -> site.SiteMeta:
    """Once the data file is open: record its identity if none is (metadata from before data
    identities: logged, not refused) or if it changed (``check`` let that through only with
    --assume-all-out-of-sync, which widened the site). Returns the metadata as stored."""
    identities = []
    changed = False
    files = _files(cfg)
    for (who, data), recorded in zip(files, _recorded(files, meta), strict=True):
        now = found(data)
        if now is None:
            raise ConfigError(f"{who}: `data` = {data} vanished while starting")
        why = mismatch(recorded, now) if recorded is not None else ""
        identities.append(now if recorded is None or why else recorded)
        if recorded is not None and not why:
            continue
        if recorded is not None and not assume_all:  # replaced between ``check`` and the open
            raise refusal(cfg, recorded, now, why, who, data)
        changed = True
        if recorded is None:
            log.warning("%s: site metadata in %s records no data file: recording %s (from "
                        "now on another data file is refused)", who, cfg.meta, now.describe())
        else:
            log.warning("%s: recording the new data file %s (was %s)", who,
                        now.describe(), recorded.describe())
    if not changed:
        return meta
    meta = meta.update(data_identity=identities[0], member_identities=tuple(identities[1:]))
    site.store(cfg.meta, meta)
    return meta


def record(cfg: config_mod.SiteConfig, meta: site.SiteMeta) -> site.SiteMeta:
    """``foresync init``: the identity of the data file it created or adopted (a group: of
    each member's)."""
    identities = []
    for who, data in _files(cfg):
        now = found(data)
        if now is None:
            raise ConfigError(f"{who}: `data` = {data} does not exist")
        identities.append(now)
    return meta.update(data_identity=identities[0], member_identities=tuple(identities[1:]))
