"""Damaged or missing metadata never shrinks what a site believes may differ (issue 12).

The undo log (``journal.undo``): a torn tail is ignored, damage leaves the rollback untrusted.
The out-of-sync store (``journal.oos_format``, ``site.load_oos``): every bad input is a one-line
error naming the file; a missing one is "every extent". And the adapters that apply the policy
(``daemon.transitions``, ``daemon.run``): widen durably first, keep the damaged file aside, refuse promote
without --force, and hand over the whole volume as the failback set with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from foresync import config as config_mod
from foresync.daemon import metadata as site
from foresync.daemon import run as daemon
from foresync.daemon import transitions as roles
from foresync.daemon.results import Promoted
from foresync.errors import ConfigError, RequestRefused
from foresync.journal import format as jfmt
from foresync.journal import oos_format, undo
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.undo import UndoLog
from foresync.link import wire
from foresync.replication import primary as pcore
from foresync.storage.file_backend import FileBackend

EXTENT = 4096
SIZE = EXTENT * 10 - 1024  # the last extent is short
VOLUME = bytes(range(16))


def _log(*extents: int) -> bytes:
    layout_last = SIZE - 9 * EXTENT
    return undo.HEADER + b"".join(
        undo.encode_entry(e, bytes([e + 1]) * (layout_last if e == 9 else EXTENT)) for e in extents)


# -- the undo log ------------------------------------------------------------------------------------


def test_undo_log_round_trip_and_layout() -> None:
    data = _log(3, 9, 0)
    replayed = undo.parse(data, EXTENT, SIZE)
    assert [e for e, _ in replayed.entries] == [3, 9, 0]
    assert replayed.torn_reason is None and replayed.damage is None
    assert data[:8] == b"FSUNDO02"
    extent, length, crc = undo.ENTRY.unpack_from(data, 16)
    assert (extent, length) == (3, EXTENT)
    assert crc == jfmt.crc32c(undo.FIELDS.pack(3, EXTENT) + bytes([4]) * EXTENT)


def test_undo_log_cut_anywhere_is_a_torn_tail() -> None:
    """Writes wait for their undo entry's commit, so a torn tail protects nothing: ignored."""
    data = _log(3, 9, 0)
    for cut in range(len(data)):
        replayed = undo.parse(data[:cut], EXTENT, SIZE)
        assert replayed.damage is None, cut
    whole_first = 16 + 12 + EXTENT
    torn = data[:whole_first] + bytes(12 + 100)  # the next entry's page not written: zeros
    replayed = undo.parse(torn, EXTENT, SIZE)
    assert replayed.damage is None and [e for e, _ in replayed.entries] == [3]


@pytest.mark.parametrize("pattern", [0x01, 0x80, 0xFF])
def test_every_flipped_byte_of_an_undo_log_is_damage(pattern: int) -> None:
    """Today a flipped byte ended the log early: fewer extents rolled back, reported consistent."""
    data = _log(3, 9, 0)
    for index in range(0, len(data), 3 if pattern == 0x01 else 7):
        damaged = bytearray(data)
        damaged[index] ^= pattern
        replayed = undo.parse(bytes(damaged), EXTENT, SIZE)
        assert replayed.damage is not None, index


def test_undo_log_entry_outside_the_volume_is_damage() -> None:
    data = undo.HEADER + undo.encode_entry(12, bytes(EXTENT))  # passes its CRC, no extent 12
    assert "does not have" in str(undo.parse(data, EXTENT, SIZE).damage)


def test_undo_log_format_1_is_still_read() -> None:
    import google_crc32c

    old = bytes([7]) * EXTENT
    data = undo.MAGIC_V1 + bytes(8) + undo.ENTRY.pack(2, EXTENT, google_crc32c.value(old)) + old
    replayed = undo.parse(data, EXTENT, SIZE)
    assert replayed.entries == [(2, old)] and replayed.damage is None


def test_an_empty_or_unwritten_header_is_not_damage() -> None:
    for data in (b"", b"FSUN", bytes(16), bytes(40)):
        assert undo.parse(data, EXTENT, SIZE).damage is None, data
    assert undo.parse(b"GARBAGE!" + bytes(8), EXTENT, SIZE).damage is not None


# -- a site applying the policy ------------------------------------------------------------------------


def _config(tmp_path: Path) -> config_mod.SiteConfig:
    (tmp_path / "site.toml").write_text(
        '[volume]\nname = "v"\ndata = "img"\nsize = "' + str(SIZE) + '"\nmeta = "meta"\n'
        '[link]\nlisten = "127.0.0.1:1"\npeer = "127.0.0.1:2"\n'
        f'[record]\nextent_size = "{EXTENT}"\ncapacity = 4\n')
    cfg = config_mod.load(str(tmp_path / "site.toml"))
    os.makedirs(cfg.meta, exist_ok=True)
    return cfg


def _secondary(cfg: config_mod.SiteConfig, **changes: object) -> site.SiteMeta:
    meta = site.SiteMeta("secondary", VOLUME, (1,)).update(**changes)
    site.store(cfg.meta, meta)
    return meta


def test_rollback_with_a_damaged_undo_log_stays_inconsistent(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path)
    meta = _secondary(cfg, consistent=False)
    backend = FileBackend(cfg.data, cfg.size)
    backend.write(0, b"N" * cfg.size)  # the unfinished pass wrote new data everywhere
    path = os.path.join(cfg.meta, site.UNDO_FILE)
    damaged = bytearray(_log(3, 5, 0))
    damaged[16 + (12 + EXTENT) + 12 + 100] ^= 0x08  # inside extent 5's saved data
    Path(path).write_bytes(bytes(damaged))
    with caplog.at_level(logging.ERROR):
        meta, restored = roles.roll_back_unfinished_resync(cfg, meta, backend, UndoLog(path))
    backend.close()
    assert restored == 1  # extent 3, before the damage
    assert meta.consistent is False and "undo log" in meta.metadata_damage
    assert site.load(cfg.meta) == meta  # durable
    assert not os.path.exists(path)
    assert Path(path + ".damaged-1").read_bytes() == bytes(damaged)
    assert any("undo log" in r.message and r.levelno == logging.ERROR for r in caplog.records)


def test_rollback_with_a_good_undo_log_is_consistent_again(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = _secondary(cfg, consistent=False)
    backend = FileBackend(cfg.data, cfg.size)
    path = os.path.join(cfg.meta, site.UNDO_FILE)
    Path(path).write_bytes(_log(3, 5) + undo.encode_entry(0, bytes(EXTENT))[:50])  # torn tail
    meta, restored = roles.roll_back_unfinished_resync(cfg, meta, backend, UndoLog(path))
    assert backend.read(3 * EXTENT, EXTENT) == bytes([4]) * EXTENT
    backend.close()
    assert restored == 2 and meta.consistent is True and meta.metadata_damage == ""
    assert set(meta.stale) == {3, 5}
    assert not os.path.exists(path)


def test_roll_back_then_promote_promotes_the_older_consistent_copy(tmp_path: Path) -> None:
    """The one "roll back, then promote" (the daemon's promote and the offline CLI's): the
    restored extents join the failback set with the record, its ranges and resync set."""
    cfg = _config(tmp_path)
    meta = _secondary(cfg, consistent=False)
    backend = FileBackend(cfg.data, cfg.size)
    undo_log = UndoLog(os.path.join(cfg.meta, site.UNDO_FILE))
    Path(undo_log.path).write_bytes(_log(3, 5))
    state = RecordState({1}, {7: (8 * EXTENT, 100)}, ((6, 1),))
    done = roles.roll_back_then_promote(cfg, meta, state, lambda: backend, undo_log, force=False)
    backend.close()
    assert done.restored == 2 and not done.refusal
    assert done.meta.role == "primary" and done.meta.epoch == 2
    stored = site.load_oos(cfg.meta, 10)
    assert stored is not None and set(stored.extents) == {1, 3, 5, 6, 8}
    assert done.failback_extents == 5
    assert done.result(cfg) == Promoted(epoch=2, failback_extents=5, failback_bytes=5 * EXTENT)


def test_roll_back_then_promote_refuses_without_force_and_changes_no_role(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = _secondary(cfg, consistent=False)  # inconsistent, and no undo log to roll back with
    undo_log = UndoLog(os.path.join(cfg.meta, site.UNDO_FILE))

    def no_image() -> FileBackend:
        raise AssertionError("nothing to roll back: the image is not opened")

    assert roles.promote_refusal(meta, force=False) == roles.INCONSISTENT_PROMOTE_ERROR
    done = roles.roll_back_then_promote(cfg, meta, RecordState(), no_image, undo_log, force=False)
    with pytest.raises(RequestRefused, match="inconsistent"):
        done.result(cfg)
    assert done.refusal == roles.INCONSISTENT_PROMOTE_ERROR
    assert site.load(cfg.meta).role == "secondary"
    damaged = _secondary(cfg, metadata_damage="record journal lost")
    assert "record journal lost" in roles.promote_refusal(damaged, force=False)
    assert roles.promote_refusal(damaged, force=True) == ""
    forced = roles.roll_back_then_promote(cfg, damaged, RecordState(), no_image, undo_log, force=True)
    assert forced.result(cfg).epoch == 2 and forced.failback_extents == 10  # damaged: everything


@pytest.mark.parametrize("damage", ["missing", "flipped", "foreign"])
def test_a_damaged_or_missing_journal_widens_the_secondary(tmp_path: Path, damage: str) -> None:
    cfg = _config(tmp_path)
    meta = _secondary(cfg)
    path = roles.journal_path(cfg)
    RecordJournal.create(path, VOLUME, RecordState({1, 2}, {})).close()
    original = Path(path).read_bytes()
    if damage == "missing":
        os.unlink(path)
    elif damage == "flipped":
        data = bytearray(original)
        data[len(data) - 3] ^= 0x20  # inside the checkpoint a clean stop wrote
        Path(path).write_bytes(bytes(data))
    else:
        RecordJournal.create(path, bytes(16), RecordState({1, 2}, {})).close()
    before = None if damage == "missing" else Path(path).read_bytes()
    meta, journal = roles.open_record(cfg, meta)
    assert journal is not None
    journal.close()
    assert meta.consistent is False and "record journal" in meta.metadata_damage
    assert site.load(cfg.meta) == meta
    assert jfmt.assess(Path(path).read_bytes(), VOLUME).doubt is None  # a fresh, usable journal
    if before is not None:
        assert Path(path + ".damaged-1").read_bytes() == before
    # Promote: refused without --force; with it the failback set is the whole volume.
    promoted, count = roles.promote(cfg, meta, journal.replayed.state)
    assert count == -(-cfg.size // cfg.extent_size)
    stored = site.load_oos(cfg.meta, count)
    assert stored is not None and stored.everything
    assert promoted.metadata_damage == "" and promoted.role == "primary"
    assert "--force" in roles.damaged_promote_error(meta)


def test_a_good_journal_is_opened_as_it_is(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = _secondary(cfg)
    path = roles.journal_path(cfg)
    journal = RecordJournal.create(path, VOLUME, RecordState({1, 2}, {}))
    journal.append(jfmt.encode_add([3]))
    journal.sync()
    journal.close()
    with open(path, "ab") as handle:
        handle.write(jfmt.encode_add([4])[:5])  # a torn append: cut, kept aside, no widening
    reopened_meta, reopened = roles.open_record(cfg, meta)
    assert reopened is not None
    reopened.close()
    assert reopened_meta == meta
    assert reopened.replayed.state.extents == {1, 2, 3}
    assert [p.name for p in Path(cfg.meta).iterdir() if ".torn-" in p.name]


# -- the out-of-sync store ----------------------------------------------------------------------------


def test_oos_round_trip_is_compact_and_checksummed() -> None:
    text = oos_format.encode({1, 2, 3, 7, 9, 10}, everything=False)
    doc = json.loads(text)
    assert doc["format"] == 2 and doc["runs"] == [[1, 3], [7, 1], [9, 2]]
    assert oos_format.decode(text, 11) == oos_format.OutOfSync(frozenset({1, 2, 3, 7, 9, 10}))
    whole = oos_format.encode(set(range(1_000_000)), everything=True)
    assert len(whole) < 100
    assert oos_format.decode(whole, 1_000_000).everything


def test_every_flipped_byte_of_oos_json_is_caught() -> None:
    text = oos_format.encode({1, 2, 3, 7, 40}, everything=False)
    for index in range(len(text)):
        for pattern in (0x01, 0x02, 0x10):
            damaged = bytearray(text.encode())
            damaged[index] ^= pattern
            try:
                decoded = oos_format.decode(damaged.decode("latin-1"), 64)
            except ValueError:
                continue
            # Only whitespace may change harmlessly (the final newline turned into another one).
            assert decoded == oos_format.OutOfSync(frozenset({1, 2, 3, 7, 40})), (index, pattern)


@pytest.mark.parametrize("text, why", [
    ("5", "not a format-2 object"),
    ("[-1]", "-1 is not an extent number"),
    ("[99999]", "extent 99999, but the volume has only 10 extents"),
    ('["x"]', '"x" is not an extent number'),
    ("[true]", "true is not an extent number"),
    ("[1.5]", "1.5 is not an extent number"),
    ("{not json", "not JSON"),
    ("", "not JSON"),
    ('{"format": 2, "everything": false, "runs": [[8, 5]], "crc32c": 0}', "only 10 extents"),
    ('{"format": 2, "everything": false, "runs": [[1, 1]], "crc32c": 0}', "fails its CRC32C"),
    ('{"format": 3}', "not a format-2"),
])
def test_bad_oos_json_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "oos.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        site.load_oos(str(tmp_path), 10)
    message = str(info.value)
    assert why in message and str(tmp_path / "oos.json") in message
    assert "\n" not in message and "--assume-all-out-of-sync" in message


def test_plain_list_oos_json_from_before_is_read(tmp_path: Path) -> None:
    (tmp_path / "oos.json").write_text("[3, 1]\n")
    assert site.load_oos(str(tmp_path), 10) == oos_format.OutOfSync(frozenset({1, 3}))
    assert site.load_oos(str(tmp_path / "nowhere"), 10) is None


def test_a_missing_oos_json_on_a_primary_means_every_extent(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path)
    with caplog.at_level(logging.ERROR):
        oos, doubt = daemon._load_out_of_sync(cfg)
    assert oos.everything and "is missing" in doubt
    stored = site.load_oos(cfg.meta, 10)
    assert stored is not None and stored.everything  # durable at once
    assert any("oos.json is missing" in r.message for r in caplog.records)
    oos, doubt = daemon._load_out_of_sync(cfg)  # restarted before the full pass: still pending
    assert oos.everything and doubt


def test_init_writes_oos_json_for_a_primary(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    daemon.init_site(cfg.path, "primary", force=False)
    assert site.load_oos(cfg.meta, 10) == oos_format.OutOfSync(frozenset())


def test_assume_all_out_of_sync_keeps_a_damaged_file_aside(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    meta = site.SiteMeta("primary", VOLUME, (1,))
    (Path(cfg.meta) / "oos.json").write_text("[99999]")
    daemon.widen_everything(cfg, meta)
    stored = site.load_oos(cfg.meta, 10)
    assert stored is not None and stored.everything
    assert (Path(cfg.meta) / "oos.json.damaged-1").read_text() == "[99999]"
    secondary = _secondary(cfg)
    widened = daemon.widen_everything(cfg, secondary)
    assert widened.consistent is False and "--assume-all-out-of-sync" in widened.metadata_damage


# -- the primary core carries "everything" ---------------------------------------------------------------


def _core() -> pcore.PrimaryCore:
    config = pcore.Config(mode=pcore.Mode.LOOKAHEAD, size=SIZE, extent_size=EXTENT, capacity=4,
                          lookahead=0, eviction=pcore.Eviction.LRU, volume_id=VOLUME,
                          window_bytes=1 << 20, history=(1,))
    return pcore.PrimaryCore(config, read=lambda offset, length: bytes(length))


def test_full_resync_pending_is_persisted_and_handed_over() -> None:
    core = _core()
    core.full_resync_pending = True
    core.connected()
    hello = next(a.message for a in core.actions() if isinstance(a, pcore.Send))  # then a PING
    assert isinstance(hello, wire.Hello) and hello.flags & wire.HelloFlag.EVERYTHING_OUT_OF_SYNC
    core.disconnected("test")
    core.actions()
    core._queue_resync(2)  # makes the set dirty: the next request_durable persists it
    core.request_durable()
    persists = [a for a in core.actions() if isinstance(a, pcore.PersistOutOfSync)]
    assert persists and persists[-1].everything
    other = _core()
    other.absorb_out_of_sync({1}, everything=True)
    assert other.full_resync_pending and other.out_of_sync == {1}


def test_inspect_shows_damage_and_preserved_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from foresync.cli import main

    cfg = _config(tmp_path)
    _secondary(cfg)
    path = roles.journal_path(cfg)
    RecordJournal.create(path, VOLUME, RecordState({1, 2}, {})).close()
    data = bytearray(Path(path).read_bytes())
    data[-2] ^= 0x01
    Path(path).write_bytes(bytes(data))
    Path(path + ".damaged-1").write_bytes(b"old")
    site.store_oos(cfg.meta, {4, 5}, everything=True)
    damaged_undo = bytearray(_log(1, 2, 3))
    damaged_undo[16 + 12 + EXTENT + 12 + 7] ^= 0x40
    Path(cfg.meta, site.UNDO_FILE).write_bytes(bytes(damaged_undo))
    result = CliRunner().invoke(main, ["inspect", "--meta", cfg.meta])
    assert result.exit_code == 0, result.output
    assert "DAMAGED at byte 32" in result.output
    assert "EVERY extent" in result.output and "2 extents: 4-5" in result.output
    assert "undo.log: 1 saved extents: 1" in result.output
    assert "preserved damaged file: record.journal.damaged-1" in result.output
    Path(cfg.meta, site.OOS_FILE).write_text("[-1]")
    result = CliRunner().invoke(main, ["inspect", "--meta", cfg.meta])
    assert result.exit_code == 0 and "oos.json: DAMAGED" in result.output, result.output
