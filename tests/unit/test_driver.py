"""The one action driver (replication/driver.py): its dispatch table and its ordering rules."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import pytest

from foresync.errors import StorageError
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.nbd.wire import Errno
from foresync.record.record import Eviction
from foresync.replication import actions
from foresync.replication import actions as actions_mod
from foresync.replication.driver import (
    EFFECTS,
    PrimaryDriver,
    PrimaryEffects,
    SecondaryDriver,
    SecondaryEffects,
)
from foresync.replication.epochs import Lineage
from foresync.replication.primary import Config, Mode, PrimaryCore
from foresync.replication.secondary import SecondaryCore

VOLUME = bytes(range(16))


def test_every_action_of_both_cores_has_an_effect_of_the_same_name_in_its_protocol() -> None:
    every = {*typing.get_args(actions.PrimaryAction), *typing.get_args(actions.SecondaryAction)}
    assert set(EFFECTS) == every
    for cls in every:
        name, fields = EFFECTS[cls]
        in_primary = cls in typing.get_args(actions.PrimaryAction)
        for side, wanted in ((PrimaryEffects, in_primary),
                             (SecondaryEffects, cls in typing.get_args(actions.SecondaryAction))):
            if wanted:
                effect = getattr(side, name)
                params = list(typing.get_type_hints(effect))
                assert params[: len(fields)] == list(fields), (cls, side, params)


@dataclass
class _Recorder:
    """A secondary's effects that record calls; writes fail once ``full`` is set."""

    driver: SecondaryDriver | None = None
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    full: bool = False
    failures: list[wire.StorageArea] = field(default_factory=list)

    def _note(self, name: str, *args: object) -> None:
        self.calls.append((name, args))

    def send(self, message: wire.Message) -> None:
        self._note("send", message)
        assert self.driver is not None
        self.driver()  # re-entrant: must return at once, the running loop goes on

    def journal_append(self, entry: bytes) -> None:
        self._note("journal_append", entry)

    def write_data(self, offset: int, data: bytes, seq: int) -> None:
        if self.full:
            raise StorageError("no space", Errno.ENOSPC)
        self._note("write_data", offset, seq)

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        if self.full:
            raise StorageError("no space", Errno.ENOSPC)
        self._note("write_run", writes[0].offset, tuple(write.seq for write in writes))

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None:
        self._note("zero_data", offset, length)

    def sync_data(self, through: int) -> None:
        self._note("sync_data", through)

    def resync_started(self) -> None:
        self._note("resync_started")

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        self._note("resync_finished", seq, generations)

    def hash_extents(self, request: int, first: int, count: int) -> None:
        self._note("hash_extents", request, first, count)

    def save_undo(self, extent: int) -> None:
        self._note("save_undo", extent)

    def close_link(self, reason: str) -> None:
        self._note("close_link", reason)

    def link_failed(self, reason: str) -> None:
        self._note("link_failed", reason)

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        self.failures.append(area)


def _greeted_secondary() -> tuple[SecondaryCore, SecondaryDriver, _Recorder]:
    core = SecondaryCore(64 * 16, 16, 0, VOLUME, RecordState())
    recorder = _Recorder()
    effects: SecondaryEffects = recorder
    driver = SecondaryDriver(core, effects)
    recorder.driver = driver
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 64 * 16, 16, 1, (1,)))
    assert driver() and recorder.calls[0][0] == "send"  # WELCOME
    recorder.calls.clear()
    return core, driver, recorder


def _write(seq: int, offset: int = 0) -> wire.Write:
    return wire.Write(seq, offset, 0, 0, (), bytes(16))


def test_a_reentrant_call_returns_at_once_and_actions_stay_in_order() -> None:
    core, driver, recorder = _greeted_secondary()
    given: list[str] = []
    take = core.actions

    def actions() -> list[actions_mod.SecondaryAction]:
        batch = take()
        given.extend(EFFECTS[type(action)][0] for action in batch)
        return batch

    core.actions = actions  # type: ignore[method-assign]
    for seq in (1, 2, 3):
        core.receive(_write(seq, 16 * seq))  # each APPLIED reply's send() pumps from inside
    core.end_of_batch()
    assert driver()
    assert [name for name, _ in recorder.calls] == given
    assert given.count("write_data") == 3 and "send" in given
    assert not driver()  # nothing left


def test_a_failed_write_stops_the_batch_and_the_core_drops_the_rest() -> None:
    core, driver, recorder = _greeted_secondary()
    recorder.full = True
    core.receive(_write(1, 0))
    core.receive(_write(2, 16))
    core.end_of_batch()
    driver()
    assert recorder.failures == [wire.StorageArea.IMAGE]
    assert not any(name == "write_data" for name, _ in recorder.calls)
    assert core.failed and {0, 1} <= core.failed_extents  # both writes' extents: stale


def test_the_hot_paths_are_refused_while_a_batch_runs() -> None:
    core, driver, recorder = _greeted_secondary()
    seen: list[bool] = []
    original = recorder.journal_append

    def during(entry: bytes) -> None:
        seen.append(driver.write_now(_write(99)))
        original(entry)

    recorder.journal_append = during  # type: ignore[method-assign]
    core.receive(wire.Write(1, 0, wire.WriteFlag.MISS, 1, (), bytes(16)))  # journals an ADD
    core.end_of_batch()
    driver()
    assert seen == [False]


class _Primary:
    """Primary effects that answer nothing synchronously but apply_local."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []
        self.sent: list[wire.Message] = []
        self.persists: list[int] = []
        self.generations: list[int] = []

    def send(self, message: wire.Message) -> None:
        self.sent.append(message)

    def apply_local(self, seq: int, offset: int, length: int, data: bytes | None, punch: bool) -> int:
        return int(Errno.ENOSPC)

    def apply_hit(self, seq: int, offset: int, data: bytes) -> int:
        return 0

    def ack_host(self, op_id: int, errno: int) -> None:
        self.acks.append((op_id, errno))

    def flush_local(self, through: int) -> None:
        pass

    def persist_out_of_sync(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        self.persists.append(token)

    def link_failed(self, reason: str) -> None:
        pass

    def resume_later(self) -> None:
        pass

    def persist_generation(self, token: int, lineage: Lineage) -> None:
        self.generations.append(token)

    def become_secondary(self, lineage: Lineage) -> None:
        pass


def test_an_errno_from_apply_local_goes_back_to_the_core_and_to_the_host() -> None:
    config = Config(Mode.LOOKAHEAD, 64 * 16, 16, 4, 0, Eviction.LRU, VOLUME)
    core = PrimaryCore(config, lambda offset, length: bytes(length))
    effects = _Primary()
    driver = PrimaryDriver(core, effects)
    core.write(1, 0, bytes(16), False)  # disconnected: out of sync, then applied locally
    driver()
    while effects.persists or effects.generations:
        if effects.persists:
            core.out_of_sync_persisted(effects.persists.pop())
        else:  # a write while cut off starts a new data generation first (epochs.py)
            core.generation_persisted(effects.generations.pop())
        driver()
    assert effects.acks == [(1, Errno.ENOSPC)]
    assert core.statistics().local_write_errors == 1  # the core heard the errno


def test_an_unknown_action_is_a_bug() -> None:
    core = SecondaryCore(64 * 16, 16, 0, VOLUME, RecordState())
    driver = SecondaryDriver(core, _Recorder())
    with pytest.raises(AssertionError, match="unknown action"):
        driver._do(object())
