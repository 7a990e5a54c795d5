"""The values foresync keeps in etcd (daemon/etcd.py), parsed: a damaged one (edited by hand,
written by another tool) is an error that names its key and says what to do, never a bare
KeyError in a log line (the non-negotiable: damaged metadata gets a clear error naming it)."""

from __future__ import annotations

import pytest

from foresync.daemon.etcd import EtcdValueDamaged, _outdated, _outdated_value, _record, _value
from foresync.errors import ForesyncError
from foresync.replication.lease import Outdated, Record

KEY = b"/foresync/c/volumes/vol0/epoch"
MARK_KEY = "/foresync/c/volumes/vol0/outdated"


def test_what_foresync_writes_reads_back() -> None:
    record = Record("a", 3, 0xABC)
    assert _record(_value(record), KEY) == record
    mark = Outdated("a", 3, 0xABC, 0xDEF)
    assert _outdated(_outdated_value(mark), MARK_KEY) == mark


@pytest.mark.parametrize(("value", "why"), [
    (b"", "Expecting value"),
    (b"not json", "Expecting value"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"site": "a", "epoch": 3}', "no epoch_id"),
    (b'{"site": "a", "epoch": "three", "epoch_id": 1}', "invalid literal"),
    (b'{"site": "a", "epoch": null, "epoch_id": 1}', "int() argument"),
    (b"\xff\xfe", "Expecting value"),
])
def test_a_damaged_record_names_its_key(value: bytes, why: str) -> None:
    with pytest.raises(EtcdValueDamaged) as caught:
        _record(value, KEY)
    text = str(caught.value)
    assert text.startswith("etcd key /foresync/c/volumes/vol0/epoch holds ") and why in text, text
    assert "etcdctl del /foresync/c/volumes/vol0/epoch" in text, text
    assert isinstance(caught.value, ForesyncError)  # the CLI prints it as an error, no traceback


def test_a_mark_without_its_generation_names_its_key() -> None:
    with pytest.raises(EtcdValueDamaged) as caught:
        _outdated(b'{"site": "a", "epoch": 3, "epoch_id": 7}', MARK_KEY)
    text = str(caught.value)
    assert text.startswith("etcd key /foresync/c/volumes/vol0/outdated holds ") and "no generation" in text
