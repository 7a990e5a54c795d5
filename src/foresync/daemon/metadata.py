"""A site's persistent metadata: identity, role and lineage, in ``<meta>/site.json``.

The lineage (replication/epochs.py) is ``epoch_history``, one id per promotion, and
``generations``, the data generations: one id per promotion and one each time a primary started
taking writes while cut off from its secondary, stored (here) before the first such write lands.
A site.json from before generations has none: its epoch history is its generations.

The file is replaced atomically (``journal.durable.write_atomic``: write a temporary file, fsync,
rename, fsync the directory), so a crash leaves either the old or the new version, never a mix. The record journal lives beside
it in ``<meta>/record.journal``; the out-of-sync extents of a primary in ``<meta>/oos.json``
(format: ``journal.oos_format``), which a primary always has once initialised.

``data_identity``: the data file this metadata describes (real path, device, inode, size;
replication/data_identity.py); a start refuses another one (daemon/data_file.py).

``metadata_damage`` (issue 12): why this site can no longer bound where its copy differs from
the primary's (its record journal or undo log was damaged or missing). Until a full resync
finishes, such a secondary is inconsistent, compares every extent on connect, refuses to be
promoted without ``--force``, and with it hands over the whole volume as its failback set.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from foresync.errors import ConfigError, StorageError
from foresync.journal import durable, oos_format
from foresync.journal.oos_format import OutOfSync
from foresync.replication.data_identity import DataIdentity
from foresync.replication.epochs import Lineage

SITE_FILE = "site.json"
JOURNAL_FILE = "record.journal"
OOS_FILE = "oos.json"
UNDO_FILE = "undo.log"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class SiteMeta:
    role: str  # "primary" | "secondary"
    volume_id: bytes | None  # None until a new secondary adopts the primary's on first connect
    epoch_history: tuple[int, ...] = ()  # one random id per promotion, oldest first
    consistent: bool = True  # False while a resync into this site has not finished
    new: bool = False  # holds no image of the volume yet: needs a full sync
    discard_local: bool = False  # `resolve --discard-local`: adopt the next primary's history
    stale: tuple[int, ...] = ()  # extents that may differ outside the record (sent in WELCOME)
    metadata_damage: str = ""  # why every extent may differ (damaged or lost metadata), or ""
    generations: tuple[int, ...] = ()  # data generations (epochs.py); () : the epoch history
    data_identity: DataIdentity | None = None  # the data file described (daemon/data_file.py)
    # A consistency group's other members' data files, in member order (data_identity is the
    # first's); () for a volume, or a group's metadata from before member identities.
    member_identities: tuple[DataIdentity, ...] = ()

    @property
    def epoch(self) -> int:
        return len(self.epoch_history)

    @property
    def lineage(self) -> Lineage:
        return Lineage(self.epoch_history, self.generations or self.epoch_history)

    def with_lineage(self, lineage: Lineage) -> SiteMeta:
        return replace(self, epoch_history=lineage.epochs, generations=lineage.data)

    def update(self, **changes: object) -> SiteMeta:
        return replace(self, **changes)  # type: ignore[arg-type]


def mint_volume_id() -> bytes:
    return uuid.uuid4().bytes


def site_path(meta_dir: str) -> Path:
    return Path(meta_dir) / SITE_FILE


def exists(meta_dir: str) -> bool:
    return site_path(meta_dir).exists()


def load(meta_dir: str) -> SiteMeta:
    path = site_path(meta_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no site metadata in {meta_dir}: run `foresync init` first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"site metadata {path} is unreadable: {exc}") from None
    if doc.get("format") != FORMAT or doc.get("role") not in ("primary", "secondary"):
        raise ConfigError(f"site metadata {path} has an unknown format or role")
    volume = doc.get("volume_id")
    identity = doc.get("data_identity")
    try:
        data_identity = DataIdentity.from_json(identity) if identity is not None else None
    except ValueError:  # matches no file: a start refuses it (data_file.check), on the safe side
        data_identity = DataIdentity(f"(damaged in {path})", 0, 0, 0, 0)
    members = doc.get("member_identities", [])
    try:
        if not isinstance(members, list):
            raise ValueError(f"not a list: {members!r}")
        member_identities = tuple(DataIdentity.from_json(m) for m in members)
    except ValueError:  # matches no file: a start refuses the group (data_file.check)
        member_identities = tuple(DataIdentity(f"(damaged in {path})", 0, 0, 0, 0)
                                  for _ in (members if isinstance(members, list) else [0]))
    return SiteMeta(
        role=doc["role"],
        volume_id=bytes.fromhex(volume) if volume else None,
        epoch_history=tuple(int(e) for e in doc.get("epoch_history", [])),
        consistent=bool(doc.get("consistent", True)),
        new=bool(doc.get("new", False)),
        discard_local=bool(doc.get("discard_local", False)),
        stale=tuple(int(e) for e in doc.get("stale", [])),
        metadata_damage=str(doc.get("metadata_damage") or ""),
        generations=tuple(int(g) for g in doc.get("generations", [])),
        data_identity=data_identity,
        member_identities=member_identities,
    )


def store(meta_dir: str, meta: SiteMeta) -> None:
    os.makedirs(meta_dir, exist_ok=True)
    path = site_path(meta_dir)
    doc = {
        "format": FORMAT,
        "role": meta.role,
        "volume_id": meta.volume_id.hex() if meta.volume_id else None,
        "epoch": meta.epoch,
        "epoch_history": list(meta.epoch_history),
        "consistent": meta.consistent,
        "new": meta.new,
        "discard_local": meta.discard_local,
        "stale": list(meta.stale),
        "metadata_damage": meta.metadata_damage,
        "generations": list(meta.generations),  # [] : the epoch history (a site.json from before)
    }
    if meta.data_identity is not None:  # absent: from before data identities, recorded at start
        doc["data_identity"] = meta.data_identity.to_json()
    if meta.member_identities:
        doc["member_identities"] = [m.to_json() for m in meta.member_identities]
    store_file(path, json.dumps(doc, indent=2) + "\n")


def store_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, durably (``durable.write_atomic``). A failure (a full or
    read-only disk, no file descriptors left) leaves the old file as it was and raises a
    StorageError that names ``path``."""
    try:
        durable.write_atomic(path, text.encode())
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}",
                           exc.errno or errno.EIO) from None


def oos_path(meta_dir: str) -> Path:
    return Path(meta_dir) / OOS_FILE


def load_oos(meta_dir: str, extent_count: int | None) -> OutOfSync | None:
    """The stored out-of-sync set, None if the file is missing (see ``oos_format.restore``). A
    damaged file is a ConfigError that names it and says what to do."""
    path = oos_path(meta_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"out-of-sync file {path} is unreadable: {exc}") from None
    try:
        return oos_format.decode(text, extent_count)
    except ValueError as exc:
        raise ConfigError(
            f"out-of-sync file {path} is damaged ({exc}): this primary cannot tell which extents "
            "the secondary lacks; to start anyway with every extent out of sync (the next connect "
            "copies the whole volume), run `foresync run --assume-all-out-of-sync` once "
            "(the damaged file is kept aside)") from None


def store_oos(meta_dir: str, extents: set[int] | frozenset[int], everything: bool = False) -> None:
    store_file(oos_path(meta_dir), oos_format.encode(extents, everything))


def check_meta_dir(meta_dir: str, create: bool = False) -> None:
    """Fail before anything is created or started if ``[volume] meta`` cannot hold the site's
    metadata: it is not a directory, cannot be created, or cannot be written to (a read-only
    file system). ``create``: make it if it does not exist (``foresync init``)."""
    where = f"[volume] meta = {meta_dir}"
    if os.path.lexists(meta_dir) and not os.path.isdir(meta_dir):
        raise ConfigError(f"{where}: is not a directory")
    if not os.path.isdir(meta_dir):
        if not create:
            raise ConfigError(f"no site metadata in {meta_dir}: run `foresync init` first")
        try:
            os.makedirs(meta_dir)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create it: {exc.strerror or exc}") from None
    probe = os.path.join(meta_dir, f".foresync-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot write there: {exc.strerror or exc}") from None
