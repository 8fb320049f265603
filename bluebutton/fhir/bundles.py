"""Assembling FHIR `searchset` Bundles as bytes: the merged pull, and connect-sized pieces of it.

Each entry stays the JSON bytes CMS sent; the merged Bundle and every piece are those bytes
joined under a small header, so sizes are exact without serialising candidates and nothing is
re-encoded on the way to connect.

Pieces are sized by what connect stores, not by what is sent: connect re-serialises the Bundle
with `json.dumps`, whose ASCII escapes turn each non-ASCII character (2 to 4 bytes of UTF-8) into
a 6-byte `\\uXXXX` (12 for a surrogate pair), so a Patient of accented names grows up to threefold
inside connect (lfh-connect.md §1, "What `data` contains").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bluebutton.errors import EntryTooLargeError, Issue

FHIR_JSON = "application/fhir+json"


_ASCII = bytes(range(0x80))
_CONTINUATION = bytes(range(0x80, 0xC0))
_FOUR_BYTE_LEAD = bytes(range(0xF0, 0xF8))
_DELETE = b"\x7f"


def connect_size(entry: bytes) -> int:
    """Bytes of `entry` once connect writes it with `json.dumps`' ASCII escapes, counted on the
    UTF-8 without decoding it: for pure ASCII one `isascii` and one `memchr`, else one pass that
    keeps only the non-ASCII bytes, the rest on those few.

    A 2- or 3-byte character becomes 6 bytes, a 4-byte one 12 (a surrogate pair): with N non-ASCII
    bytes, C of them continuation bytes and F four-byte lead bytes, the growth is 5N - 6C + 6F.
    DEL (0x7f), ASCII but outside json's printable range, becomes 6 bytes too. Escapes CMS already
    wrote count as they stand, so the count never falls short of connect's.
    """
    size = len(entry)
    if _DELETE in entry:
        size += 5 * entry.count(_DELETE)
    if entry.isascii():
        return size
    rest = entry.translate(None, _ASCII)
    continuation = len(rest) - len(rest.translate(None, _CONTINUATION))
    four_byte = len(rest) - len(rest.translate(None, _FOUR_BYTE_LEAD))
    return size + 5 * len(rest) - 6 * continuation + 6 * four_byte


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class BundleHeader:
    """Everything of a searchset Bundle but its entries."""

    id: str
    last_updated: str
    total: int

    @classmethod
    def fresh(cls, total: int) -> BundleHeader:
        return cls(id=str(uuid.uuid4()), last_updated=_now(), total=total)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "id": self.id,
            "meta": {"lastUpdated": self.last_updated},
            "type": "searchset",
            "total": self.total,
        }

    def wrap(self, entries: Sequence[bytes]) -> bytes:
        return b"".join(self.parts(entries))

    def parts(self, entries: Sequence[bytes]) -> Iterator[bytes]:
        """The wrapped Bundle as consecutive byte strings, the entries among them uncopied."""
        yield orjson.dumps(self.as_dict())[:-1] + b',"entry":['
        for index, entry in enumerate(entries):
            if index:
                yield b","
            yield entry
        yield b"]}"

    def size(self, entries: Sequence[bytes]) -> int:
        """`len(self.wrap(entries))`, without assembling it."""
        return self.overhead() + sum(len(e) for e in entries) + max(len(entries) - 1, 0)

    def overhead(self) -> int:
        """Bytes of a wrapped Bundle that are not entries or the commas between them."""
        return len(orjson.dumps(self.as_dict())) + len(',"entry":[]')


@dataclass(frozen=True)
class Piece:
    """A run of consecutive entries `[start, stop)` sent to connect as one Bundle.

    The body is assembled when asked for, so only the piece being sent is held twice in memory.
    """

    start: int
    stop: int
    header: BundleHeader
    entries: Sequence[bytes] = field(repr=False)

    @property
    def body(self) -> bytes:
        return self.header.wrap(self.entries[self.start : self.stop])


def split_entries(entries: Sequence[bytes], limit: int, merged: BundleHeader) -> list[Piece]:
    """Cut the entries, in order and never inside one, into as few Bundles as fit under `limit`
    as connect stores them (`connect_size`).

    Greedy packing is optimal here: with the order fixed, closing a piece later never forces more
    pieces. When everything fits, the one piece is the merged Bundle itself (same id).
    """
    sizes = [connect_size(entry) for entry in entries]
    # Headers are ASCII, so their size as sent is their size in connect.
    if merged.overhead() + sum(sizes) + max(len(entries) - 1, 0) <= limit:
        return [Piece(0, len(entries), merged, entries)]
    overhead = BundleHeader.fresh(merged.total).overhead()
    for index, size in enumerate(sizes):
        if overhead + size > limit:
            raise _too_large(index, entries[index], size, limit)
    bounds: list[tuple[int, int]] = []
    start, total = 0, overhead
    for index, size in enumerate(sizes):
        added = size + (1 if index > start else 0)
        if index > start and total + added > limit:
            bounds.append((start, index))
            start, total = index, overhead + size
        else:
            total += added
    bounds.append((start, len(entries)))
    return [Piece(a, b, BundleHeader.fresh(merged.total), entries) for a, b in bounds]


# What may be quoted of an entry: its resource type and FHIR id (R4 `id` is [A-Za-z0-9-.]{1,64}).
_RESOURCE_TYPE = re.compile(r"[A-Za-z]{1,64}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _reference(entry: bytes) -> str:
    """`Type/id` of an entry's resource, each part only if well-formed; never other content."""
    try:
        resource = orjson.loads(entry).get("resource")
    except (orjson.JSONDecodeError, AttributeError):
        resource = None
    if not isinstance(resource, dict):
        return "?/?"
    kind, ident = resource.get("resourceType"), resource.get("id")
    kind = kind if isinstance(kind, str) and _RESOURCE_TYPE.fullmatch(kind) else "?"
    ident = ident if isinstance(ident, str) and _FHIR_ID.fullmatch(ident) else "?"
    return f"{kind}/{ident}"


def _too_large(index: int, entry: bytes, size: int, limit: int) -> EntryTooLargeError:
    path = f"Bundle.entry[{index}]"
    return EntryTooLargeError(
        f"entry {index} ({_reference(entry)}) alone is {size} bytes as connect stores it "
        f"(non-ASCII characters count 6 bytes each, connect writes them as \\u escapes), more than "
        f"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES={limit} allows in one connect record; nothing was "
        "forwarded (narrow the search, or raise the limit if your connect accepts bigger records)",
        issues=[Issue(f"{path} cannot fit in one connect record", "too-costly", expression=(path,))],
    )
