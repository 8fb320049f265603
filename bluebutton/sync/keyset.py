"""Cursors for keyset paging: a page ends at a row, the next page starts after it.

Keyset paging (`WHERE (created_at, id) > (<last row>) ORDER BY created_at, id LIMIT n`) costs the
same on page 1,000 as on page 1 and is stable under inserts: a row added while an operator pages
lands where it sorts and never shifts another row onto a second page, as OFFSET would. A cursor is
the last row's sort key, base64url-encoded JSON, opaque to the caller; one that does not decode to
the expected shape is refused with 422 naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from bluebutton.errors import BlueButtonError, Issue

MAX_CURSOR = 512  # characters; every cursor this service issues is far shorter


class CursorError(BlueButtonError):
    """422: a `cursor` this service did not issue (edited, truncated, or from another listing)."""

    status_code = 422
    code = "invalid"

    def __init__(self) -> None:
        super().__init__(
            "cursor: not a cursor of this listing; pass next_cursor from the previous page as it was "
            "given, or leave cursor out for the first page"
        )

    def issues(self) -> list[Issue]:
        return [Issue(self.message, self.code, expression=("cursor",))]


def encode(*key: str | int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).rstrip(b"=").decode()


def decode(cursor: str, *kinds: type[str] | type[int]) -> tuple[Any, ...]:
    """The sort key in a cursor, each part of the kind given, or CursorError."""
    if len(cursor) > MAX_CURSOR:
        raise CursorError()
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as e:
        raise CursorError() from e
    if not isinstance(key, list) or len(key) != len(kinds):
        raise CursorError()
    # bool is an int in Python; a cursor never holds one
    if not all(type(part) is kind for part, kind in zip(key, kinds, strict=True)):
        raise CursorError()
    return tuple(key)
