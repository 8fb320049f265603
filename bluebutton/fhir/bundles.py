"""Assembling FHIR `searchset` Bundles as bytes: the merged pull, and connect-sized pieces of it.

Each entry stays the JSON bytes CMS sent; the merged Bundle and every piece are those bytes
joined under a small header, so nothing is re-encoded on the way to connect.

Pieces are sized by what connect stores, not by what is sent. connect 0.42.0 validates the Bundle
with fhir.resources 6.4.0 and stores `json.dumps(model.dict())` in its Kafka record, base64-encoded
inside an envelope that must stay within 999,964 bytes (lfh-connect.md §6, §7; the emulator's
`sandbox/connect/reserialise.py` reproduces it). That text is larger than what CMS sent: `", "` and
`": "` separators, every non-ASCII character a 6-byte `\\uXXXX` escape (12 for a surrogate pair),
decimals written as floats (`2` → `2.0`), times padded to microseconds with `Z` as `+00:00`,
base64Binary encoded a second time. `connect_size` bounds it from above on the bytes, without
parsing them, so an allowed `BLUEBUTTON_LFH_MAX_BUNDLE_BYTES` can never draw connect's 500.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from bluebutton.errors import EntryTooLargeError, Issue

FHIR_JSON = "application/fhir+json"

CONNECT_RECORD_BYTES = 999_964
"""The largest Kafka record connect 0.42.0 stores (librdkafka's 1,000,000-byte `message.max.bytes`
less its framing, measured: lfh-connect.md §6); larger ones draw its 500."""

CONNECT_ENVELOPE_BYTES = 2_964
"""Room kept for the envelope around `data`: its sixteen other fields (about 560 bytes) and the
request headers connect copies into `transmission_attributes` (about 200 from this client), with
a wide margin for headers a proxy may add."""

MAX_BUNDLE_BYTES = (CONNECT_RECORD_BYTES - CONNECT_ENVELOPE_BYTES) // 4 * 3
"""The largest allowed `BLUEBUTTON_LFH_MAX_BUNDLE_BYTES` (747,750): base64 makes `data` 4/3 of the
JSON, and the envelope must fit in one record."""

_ASCII = bytes(range(0x80))
_CONTINUATION = bytes(range(0x80, 0xC0))
_FOUR_BYTE_LEAD = bytes(range(0xF0, 0xF8))
_DELETE = b"\x7f"


def _classes() -> bytes:
    """A `bytes.translate` table mapping each byte to its class for `_value_growth`'s counts."""
    table = bytearray(b"x" * 256)
    for byte in b"0123456789-":
        table[byte] = ord("D")  # a digit, or the sign that may start a number
    for byte in b" [":
        table[byte] = ord("S")  # what precedes a value once separators are `", "` and `": "`
    table[ord(":")] = ord("C")
    table[ord('"')] = ord("Q")
    for byte in b"eE":
        table[byte] = ord("E")
    return bytes(table)


_CLASSES = _classes()
# Elements connect's fhir.resources types as base64Binary in R4, whose text it base64-encodes again.
_BASE64_KEYS = (b'Base64Binary": "', b'"data": "', b'"hash": "', b'"query": "', b'"carrierAIDC": "')
_ESCAPE = re.compile(rb"\\u[0-9A-Fa-f]{4}")
_BASE64_NAME = re.compile(r"data|hash|query|carrierAIDC|[A-Za-z]*Base64Binary")


def _escaped_size(text: bytes) -> int:
    """Bytes of `text` with `json.dumps`' ASCII escapes, counted on the UTF-8 without decoding
    it: a 2- or 3-byte character becomes 6 bytes, a 4-byte one 12 (a surrogate pair); with N
    non-ASCII bytes, C of them continuation bytes and F four-byte lead bytes, the growth is
    5N - 6C + 6F. DEL (0x7f), ASCII but outside json's printable range, becomes 6 bytes too.
    Escapes already in the text count as they stand, so the count never falls short."""
    size = len(text)
    if _DELETE in text:
        size += 5 * text.count(_DELETE)
    if text.isascii():
        return size
    rest = text.translate(None, _ASCII)
    continuation = len(rest) - len(rest.translate(None, _CONTINUATION))
    four_byte = len(rest) - len(rest.translate(None, _FOUR_BYTE_LEAD))
    return size + 5 * len(rest) - 6 * continuation + 6 * four_byte


def _value_growth(text: bytes) -> int:
    """At least what connect adds to the values of `text` (already in `json.dumps` layout), from
    counts of byte-class patterns; a match inside a string only adds a little margin:

    - a number (after a space or `[`): up to 4 (`2` → `2.0` as a decimal, `0` → `false` as a
      boolean); 17 digits in a row, 5 more (`1.2345678901234568e+16`); a digit before `e`/`E`,
      21 (a float's `repr` has at most 24 characters, an exponent literal at least 3);
    - a time `h:mm:ss`: 10 (`Z` → `+00:00`, a fraction padded to six digits);
    - a string of 1 or 2 characters: 2 or 1 (`"n"` → `false` as a boolean);
    - the text of a base64Binary element: encoded once more, a third larger (CMS sends none).
    """
    # The hex digits of an escape are no number or time.
    counted = _ESCAPE.sub(b"______", text) if b"\\u" in text else text
    classes = counted.translate(_CLASSES)
    growth = 4 * classes.count(b"SD") + 5 * classes.count(b"D" * 17) + 21 * classes.count(b"DE")
    growth += 10 * classes.count(b"DCDDCDD")
    growth += 2 * (classes.count(b"QxQ") + classes.count(b"QDQ")) + classes.count(b"QxxQ")
    if any(key in text for key in _BASE64_KEYS):
        growth += _base64_growth(orjson.loads(text))
    return growth


def _base64_growth(value: Any, key: str = "") -> int:
    if isinstance(value, dict):
        return sum(_base64_growth(v, k) for k, v in value.items())
    if isinstance(value, list):
        return sum(_base64_growth(v, key) for v in value)
    if isinstance(value, str) and _BASE64_NAME.fullmatch(key):
        return len(base64.b64encode(value.encode())) - len(value)
    return 0


def connect_size(entry: bytes) -> int:
    """An upper bound on the bytes `entry` (valid JSON) takes in the JSON connect stores: exact
    for separators, whitespace and escapes (msgspec lays it out as `json.dumps` does, at C
    speed), a little above for values. About 0.7 ms for a 50 KB claim: the validation workers
    measure the entries they parse (`Validator.check`), so pulls pay nothing on the event loop.
    """
    try:
        text = msgspec.json.format(entry, indent=0)
    except msgspec.DecodeError:
        # Not JSON: nothing connect would store; a separator can still grow by its space.
        text = entry + b" " * (entry.count(b":") + entry.count(b","))
    return _escaped_size(text) + _value_growth(text)


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

    def connect_overhead(self) -> int:
        """`connect_size` of the wrapped Bundle without its entries and the `", "` between them.

        The id is measured as letters: connect stores it as it stands, and its random digits would
        only add margin that differs from one piece to the next."""
        plain = {**self.as_dict(), "id": "x" * len(self.id)}
        return connect_size(orjson.dumps(plain)[:-1] + b',"entry":[]}')


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


def split_entries(
    entries: Sequence[bytes], limit: int, merged: BundleHeader, sizes: Sequence[int] | None = None
) -> list[Piece]:
    """Cut the entries, in order and never inside one, into as few Bundles as fit under `limit`
    as connect stores them (`connect_size` of each entry, or `sizes` when the caller has them).

    Greedy packing is optimal here: with the order fixed, closing a piece later never forces more
    pieces. When everything fits, the one piece is the merged Bundle itself (same id).
    """
    if sizes is None:
        sizes = [connect_size(entry) for entry in entries]
    elif len(sizes) != len(entries):
        raise ValueError(f"{len(sizes)} sizes for {len(entries)} entries")
    # connect writes the comma between two entries as ", ".
    if merged.connect_overhead() + sum(sizes) + 2 * max(len(entries) - 1, 0) <= limit:
        return [Piece(0, len(entries), merged, entries)]
    overhead = BundleHeader.fresh(merged.total).connect_overhead()
    for index, size in enumerate(sizes):
        if overhead + size > limit:
            raise _too_large(index, entries[index], size, limit)
    bounds: list[tuple[int, int]] = []
    start, total = 0, overhead
    for index, size in enumerate(sizes):
        added = size + (2 if index > start else 0)
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
        f"(connect re-serialises it: non-ASCII characters as 6-byte \\u escapes, spaces after "
        f"separators, decimals as floats, times to the microsecond), more than "
        f"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES={limit} allows in one connect record; nothing was "
        "forwarded (narrow the search, or raise the limit if your connect accepts bigger records)",
        issues=[Issue(f"{path} cannot fit in one connect record", "too-costly", expression=(path,))],
    )
