"""Admin request bodies (admin/body.py): JSON objects with declared fields, nothing else."""

from __future__ import annotations

import pytest

from foresync.admin.body import BodyError, parse_body
from foresync.errors import RemoteProtocolError

FIELDS = {"force": bool, "count": int, "name": str}


@pytest.mark.parametrize("body, expected", [
    (b"", {}),
    (b"  \r\n", {}),
    (b"{}", {}),
    (b'{"force": true}', {"force": True}),
    (b'{"force":  true}', {"force": True}),  # the old substring match read this as no
    (b'{\n "force" : false }', {"force": False}),
    (b'{"count": 3, "name": "x"}', {"count": 3, "name": "x"}),
])
def test_accepted(body: bytes, expected: dict[str, object]) -> None:
    assert parse_body(body, FIELDS) == expected


@pytest.mark.parametrize("body, field, words", [
    (b"no-discard-local-please", None, "not JSON"),
    (b'{"force": true', None, "not JSON"),
    (b"[true]", None, "JSON object, not list"),
    (b'"force"', None, "JSON object, not str"),
    (b"null", None, "JSON object, not NoneType"),
    (b"true", None, "JSON object, not bool"),
    (b'{"forse": true}', "forse", "unknown field 'forse' (this endpoint takes: count, force, name)"),
    (b'{"force": "true"}', "force", "field 'force' must be a boolean (true or false), not \"true\""),
    (b'{"force": 1}', "force", "must be a boolean"),
    (b'{"force": null}', "force", "must be a boolean"),
    (b'{"count": true}', "count", "field 'count' must be an integer, not true"),
    (b'{"count": 1.5}', "count", "must be an integer"),
    (b'{"name": 7}', "name", "must be a string"),
    (b'{"force": false, "force": true}', "force", "field 'force' is given twice"),
    (b'{"count": NaN}', None, "NaN is not JSON"),
    (b"\xff\xfe{}", None, "not UTF-8"),
])
def test_refused_naming_the_field(body: bytes, field: str | None, words: str) -> None:
    with pytest.raises(BodyError) as caught:
        parse_body(body, FIELDS)
    assert words in str(caught.value)
    assert caught.value.field == field
    assert isinstance(caught.value, RemoteProtocolError)  # the peer's fault, not ours


def test_an_endpoint_without_fields_takes_only_an_empty_object() -> None:
    assert parse_body(b"{}", {}) == {}
    with pytest.raises(BodyError, match=r"unknown field 'force' \(this endpoint takes: none\)"):
        parse_body(b'{"force": true}', {})
