"""Assembling FHIR `searchset` Bundles as bytes: the merged pull, and connect-sized pieces of it.

Each entry stays the JSON bytes CMS sent; the merged Bundle and every piece are those bytes
joined under a small header, so sizes are exact without serialising candidates and nothing is
re-encoded on the way to connect.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bluebutton.errors import EntryTooLargeError

FHIR_JSON = "application/fhir+json"


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
    """Cut the entries, in order and never inside one, into as few Bundles under `limit` as fit.

    Greedy packing is optimal here: with the order fixed, closing a piece later never forces more
    pieces. When everything fits, the one piece is the merged Bundle itself (same id).
    """
    if merged.size(entries) <= limit:
        return [Piece(0, len(entries), merged, entries)]
    probe = BundleHeader.fresh(merged.total)
    overhead = probe.overhead()
    for index, entry in enumerate(entries):
        if overhead + len(entry) > limit:
            raise EntryTooLargeError(
                f"entry {index} alone is {len(entry)} bytes of JSON, more than "
                f"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES={limit} allows in one connect record; nothing "
                "was forwarded (narrow the search, or raise the limit if your connect accepts "
                "bigger records)"
            )
    bounds: list[tuple[int, int]] = []
    start, size = 0, overhead
    for index, entry in enumerate(entries):
        added = len(entry) + (1 if index > start else 0)
        if index > start and size + added > limit:
            bounds.append((start, index))
            start, size = index, overhead + len(entry)
        else:
            size += added
    bounds.append((start, len(entries)))
    return [Piece(a, b, BundleHeader.fresh(merged.total), entries) for a, b in bounds]
