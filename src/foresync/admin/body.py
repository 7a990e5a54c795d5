"""Admin request bodies: a JSON object with known fields, checked before any endpoint runs.

Theory: an endpoint that changes state (promote, demote, resolve, verify) declares the fields
it takes and their types. A body is parsed as JSON, never searched for a substring: the old
server took ``{"repair":  true}`` (two spaces) for no repair and ``no-discard-local-please`` for
yes. An empty body means ``{}``: every field has a default. Anything else is refused, naming the
field: a body that is not UTF-8 JSON, a JSON value that is not an object, a field the endpoint
does not know, a field given twice, or a value of the wrong type (``"true"`` is not ``true``,
and ``1`` is not a boolean either).

Pure: bytes in, a dict or a ``RemoteProtocolError`` out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from foresync.errors import RemoteProtocolError

Fields = Mapping[str, type]  # field name -> bool, int or str

_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", str: "a string"}


class BodyError(RemoteProtocolError):
    """The request body is not what the endpoint takes; ``field`` names the culprit, if one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise BodyError(f"field {key!r} is given twice", key)
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON")


def _has_type(value: object, expected: type) -> bool:
    if expected is int:  # JSON true is not an integer, though Python's bool is one
        return isinstance(value, int) and not isinstance(value, bool)
    return type(value) is expected


def parse_body(body: bytes, fields: Fields) -> dict[str, Any]:
    """The body as a dict holding only ``fields``, each of its declared type."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8 text; send a JSON object") from None
    except json.JSONDecodeError as exc:
        raise BodyError(f"the body is not JSON ({exc.msg} at character {exc.pos}); "
                        "send a JSON object such as {}") from None
    if not isinstance(doc, dict):
        raise BodyError(f"the body must be a JSON object, not {type(doc).__name__}; "
                        "send a JSON object such as {}")
    known = ", ".join(sorted(fields)) or "none"
    for key, value in doc.items():
        expected = fields.get(key)
        if expected is None:
            raise BodyError(f"unknown field {key!r} (this endpoint takes: {known})", key)
        if not _has_type(value, expected):
            raise BodyError(f"field {key!r} must be {_TYPE_NAMES.get(expected, expected.__name__)}, "
                            f"not {json.dumps(value)}", key)
    return doc
