"""connect 0.42.0's re-serialisation of a posted resource: what it stores in `data`, and so its size.

connect parses the body with fhir.resources 6.4.0 (pydantic v1) and stores
`json.dumps(model.dict(), cls=ConnectEncoder)` (connect `support/encoding.py`), not the bytes it
got (lfh-connect.md §1 "What `data` contains", §7). Read from that code and fhir.resources 6.4.0's
`fhirtypes.py`, with pydantic v1's parsers:

- `json.dumps` defaults: `", "` and `": "` separators, every non-ASCII character `\\uXXXX`-escaped;
- decimals: the JSON number (or string) becomes a `Decimal`, then `float`, written as Python's
  `repr`: `2` → `2.0`, `1e15` → `1000000000000000.0`, `"1.5"` → `1.5`;
- `dateTime` and `instant` with a time, and `time`: parsed and written by `isoformat()`, so `Z`
  becomes `+00:00` and a fraction has six digits (`.978` → `.978000`); full dates stay as they
  are, partial dates are kept as text;
- `base64Binary`: pydantic v1 keeps the text as bytes and `ConnectEncoder` base64-encodes them
  again (a third larger);
- integers and booleans are parsed (`1e5` for an integer → `100000`, `1` for a boolean → `true`),
  `uuid` loses its `urn:uuid:` prefix, and empty or null elements are dropped.

The element types come from the fhir.resources 8 model the emulator validated with (same R4 element
types). Keys keep the posted order where connect writes FHIR's element order: the size is the same.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import types
import typing
import uuid
from functools import cache
from typing import Any

from pydantic import BaseModel

_KINDS = (bool, int, decimal.Decimal, datetime.datetime, datetime.date, datetime.time, bytes, uuid.UUID)


def connect_json(model: BaseModel, body: dict[str, Any]) -> str:
    """The JSON connect stores for `body`, which `model` is the validated form of."""
    return json.dumps(_element(model, body))


def _element(model: BaseModel, raw: dict[str, Any]) -> dict[str, Any]:
    fields = _fields(type(model))
    out: dict[str, Any] = {}
    for key, raw_value in raw.items():
        if key == "resourceType":
            out[key] = raw_value
            continue
        spec = fields.get(key)
        if spec is None:
            continue  # not an element of this model: validation would have refused it
        name, kind = spec
        value = _value(getattr(model, name), raw_value, kind)
        if value is not None and value != [] and value != {}:
            out[key] = value
    return out


def _value(value: Any, raw: Any, kind: type | None) -> Any:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return _element(value, raw) if isinstance(raw, dict) else None
    if isinstance(value, list):
        raws = raw if isinstance(raw, list) else [raw]
        items = [_value(v, r, kind) for v, r in zip(value, raws, strict=False)]
        return [item for item in items if item is not None]
    return _primitive(value, raw, kind)


def _primitive(value: Any, raw: Any, kind: type | None) -> Any:
    if kind is decimal.Decimal:
        return float(decimal.Decimal(str(raw).strip()))
    if kind is bytes:
        return base64.b64encode(str(raw).encode()).decode()
    if kind is uuid.UUID:
        return str(value)
    if kind in (datetime.datetime, datetime.date, datetime.time):
        if isinstance(raw, str) and kind is not datetime.time and "T" not in raw:
            return raw  # a date, or a partial date kept as text
        if isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        return raw
    if kind is bool:
        return bool(value)
    if kind is int:
        return int(value)
    return raw


@cache
def _fields(cls: type[BaseModel]) -> dict[str, tuple[str, type | None]]:
    """alias → (attribute name, primitive kind or None) for one model class."""
    return {(info.alias or name): (name, _kind(info.annotation)) for name, info in cls.model_fields.items()}


def _kind(annotation: Any) -> type | None:
    """The primitive Python type under Optional/List/Annotated/Union, or None for anything else."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _kind(arg)
        return None
    if isinstance(annotation, type):
        for kind in _KINDS:
            if issubclass(annotation, kind):
                return kind
    return None
