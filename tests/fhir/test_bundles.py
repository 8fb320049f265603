"""Bundles as bytes: the merged searchset, and splitting it into connect-sized pieces."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fhir.resources.R4B.bundle import Bundle

from bluebutton.errors import EntryTooLargeError
from bluebutton.fhir.bundles import BundleHeader, connect_size, split_entries
from bluebutton.sandbox.connect.app import ConnectSandboxConfig, create_connect_app
from tests.factories import compact, entry_for, eob_with_entry_size, make_eob, make_patient


def entries_of_sizes(sizes: list[int]) -> list[bytes]:
    return [compact(entry_for(eob_with_entry_size(n, size))) for n, size in enumerate(sizes)]


def overhead() -> int:
    """Bytes of a wrapped Bundle besides its entries and their commas (measured, not asked)."""
    one = compact(entry_for(make_eob(1)))
    return len(BundleHeader.fresh(1).wrap([one])) - len(one)


def min_pieces(sizes: list[int], limit: int, head: int) -> int:
    """Fewest ordered pieces under `limit` (dynamic programming, independent of the product)."""
    best = [0] + [10**9] * len(sizes)
    for stop in range(1, len(sizes) + 1):
        for start in range(stop):
            size = head + sum(sizes[start:stop]) + (stop - start - 1)
            if size <= limit:
                best[stop] = min(best[stop], best[start] + 1)
    return best[-1]


def test_header_is_fresh_each_time() -> None:
    a, b = BundleHeader.fresh(3), BundleHeader.fresh(3)
    assert a.id != b.id
    as_dict = a.as_dict()
    assert as_dict["resourceType"] == "Bundle"
    assert as_dict["type"] == "searchset"
    assert as_dict["total"] == 3
    stamp = datetime.fromisoformat(as_dict["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_wrap_is_the_bundle_with_its_entries(count: int) -> None:
    resources = [make_eob(n) for n in range(count)]
    entries = [compact(entry_for(r)) for r in resources]
    header = BundleHeader.fresh(count)
    body = header.wrap(entries)
    parsed = orjson.loads(body)
    assert parsed == {**header.as_dict(), "entry": [entry_for(r) for r in resources]}
    if count:
        Bundle.model_validate(parsed)
    assert len(body) == header.overhead() + sum(map(len, entries)) + max(count - 1, 0)


def test_everything_that_fits_is_one_piece_the_merged_bundle() -> None:
    entries = entries_of_sizes([3000] * 5)
    merged = BundleHeader.fresh(5)
    pieces = split_entries(entries, 600_000, merged)
    assert len(pieces) == 1
    assert (pieces[0].start, pieces[0].stop) == (0, 5)
    assert pieces[0].body == merged.wrap(entries)


def _check_pieces(entries: list[bytes], limit: int, merged: BundleHeader) -> list[dict[str, Any]]:
    pieces = split_entries(entries, limit, merged)
    bundles = [orjson.loads(piece.body) for piece in pieces]
    for piece, bundle in zip(pieces, bundles, strict=True):
        assert len(piece.body) <= limit
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "searchset"
        assert bundle["entry"] == [orjson.loads(e) for e in entries[piece.start : piece.stop]]
        Bundle.model_validate(bundle)
    # in order, contiguous, nothing lost or repeated
    assert [p.start for p in pieces] == [0] + [p.stop for p in pieces[:-1]]
    assert pieces[-1].stop == len(entries)
    joined = [e for b in bundles for e in b["entry"]]
    assert joined == [orjson.loads(e) for e in entries]
    assert len({b["id"] for b in bundles}) == len(bundles)
    return bundles


def test_two_entries_per_piece() -> None:
    entries = entries_of_sizes([4000] * 10)
    bundles = _check_pieces(entries, 10_000, BundleHeader.fresh(10))
    assert [len(b["entry"]) for b in bundles] == [2] * 5


def test_a_piece_may_be_exactly_the_limit() -> None:
    entries = entries_of_sizes([4000] * 4)
    limit = overhead() + 4000 + 1 + 4000
    pieces = split_entries(entries, limit, BundleHeader.fresh(4))
    assert [len(p.body) for p in pieces] == [limit, limit]


@pytest.mark.parametrize("seed", range(6))
def test_as_few_pieces_as_fit(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1500, 7000) for _ in range(rng.randint(5, 14))]
    limit = rng.choice([10_000, 12_345, 20_000])
    entries = entries_of_sizes(sizes)
    bundles = _check_pieces(entries, limit, BundleHeader.fresh(len(entries)))
    assert len(bundles) == min_pieces(sizes, limit, overhead())


@pytest.mark.parametrize(
    ("sizes", "index"),
    [
        pytest.param([2000, 12_000, 2000], 1, id="middle"),
        pytest.param([12_000], 0, id="only"),
        pytest.param([2000, 2000, 2000, 2000, 2000, 11_000], 5, id="last"),
    ],
)
def test_an_entry_too_big_alone_is_refused(sizes: list[int], index: int) -> None:
    entries = entries_of_sizes(sizes)
    with pytest.raises(EntryTooLargeError) as info:
        split_entries(entries, 10_000, BundleHeader.fresh(len(entries)))
    assert info.value.status_code == 422
    assert f"entry {index}" in info.value.message
    assert "BLUEBUTTON_LFH_MAX_BUNDLE_BYTES" in info.value.message


def test_an_entry_that_just_fits_alone_is_sent_alone() -> None:
    biggest = 10_000 - overhead()
    entries = entries_of_sizes([2000, biggest, 2000])
    bundles = _check_pieces(entries, 10_000, BundleHeader.fresh(3))
    assert [len(b["entry"]) for b in bundles] == [1, 1, 1]


# --- sizes as connect stores them (json.dumps with ASCII escapes) ---------------------------------------


def as_connect_writes(body: bytes) -> int:
    """Independent of the product: Python's json with its default ASCII escapes (what connect
    re-serialises with), compact separators so only the escapes differ from what was sent."""
    return len(json.dumps(json.loads(body), separators=(",", ":")))


ALPHABET = 'aZ09 -."\\\n\t\x01\x7fé\u00ff\u0100€\u4e2d\uffff😀\U0010ffff'


@pytest.mark.parametrize("seed", range(5))
def test_connect_size_is_the_ascii_escaped_length(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 200)))
        entry = compact(entry_for(make_patient(family=text, given=text[::-1])))
        assert connect_size(entry) == as_connect_writes(entry), text


@pytest.mark.parametrize(
    ("text", "growth"),
    [
        pytest.param("plain", 0, id="ascii"),
        pytest.param("é", 4, id="two-byte"),
        pytest.param("€", 3, id="three-byte"),
        pytest.param("😀", 8, id="four-byte-surrogate-pair"),
    ],
)
def test_connect_size_per_character(text: str, growth: int) -> None:
    entry = compact(entry_for(make_patient(family=text)))
    assert connect_size(entry) - len(entry) == growth


def test_escapes_already_in_the_bytes_count_as_they_stand() -> None:
    escaped = json.dumps(entry_for(make_patient(family="é" * 10)), separators=(",", ":")).encode()
    assert escaped.isascii()
    assert connect_size(escaped) == len(escaped) == as_connect_writes(escaped)


def test_pieces_fit_as_connect_stores_them_not_as_sent() -> None:
    # 2,000 bytes of UTF-8 that connect writes as 6,000: by UTF-8 four fit in 10,000, really one.
    entries = [compact(entry_for(make_patient(f"p{n}", family="é" * 1000))) for n in range(6)]
    assert all(len(e) < 2500 < 6000 < connect_size(e) for e in entries)
    limit = 10_000
    merged = BundleHeader.fresh(len(entries))

    pieces = split_entries(entries, limit, merged)

    assert [(p.start, p.stop) for p in pieces] == [(n, n + 1) for n in range(6)]
    for piece in pieces:
        assert as_connect_writes(piece.body) <= limit
        assert orjson.loads(piece.body)["entry"] == [
            orjson.loads(e) for e in entries[piece.start : piece.stop]
        ]


def test_an_entry_that_fits_sent_but_not_stored_is_refused_by_type_and_id() -> None:
    secret_name = "Élodie-" + "é" * 4000  # 8 KB of UTF-8, 24 KB as connect writes it
    entries = [
        compact(entry_for(make_patient("-19990000000001"))),
        compact(entry_for(make_patient("-19990000000043", family=secret_name))),
    ]
    assert len(entries[1]) < 10_000 < connect_size(entries[1])

    with pytest.raises(EntryTooLargeError) as refused:
        split_entries(entries, 10_000, BundleHeader.fresh(2))

    issues = refused.value.issues()
    text = " | ".join(issue.diagnostics for issue in issues)
    assert "entry 1 (Patient/-19990000000043)" in text
    assert f"{connect_size(entries[1])} bytes as connect stores it" in text
    assert "Élodie" not in text and "é" not in text  # no payload content
    assert ("Bundle.entry[1]",) in [issue.expression for issue in issues]


def test_a_refused_entry_quotes_only_a_well_formed_type_and_id() -> None:
    resource = {**make_patient(), "id": "x" * 65 + '"<script>'}
    entry = compact(entry_for(resource)) + b" " * 20_000
    with pytest.raises(EntryTooLargeError) as refused:
        split_entries([entry], 10_000, BundleHeader.fresh(1))
    assert "entry 0 (Patient/?)" in refused.value.message
    assert "script" not in refused.value.message


async def test_every_piece_of_accented_patients_is_stored_by_the_connect_emulator(tmp_path: Path) -> None:
    """The emulator measures a record as connect does (json.dumps, base64, the 1 MB Kafka limit):
    pieces sized by UTF-8 would carry three times their size in escapes and be refused."""
    entries = [compact(entry_for(make_patient(f"p{n}", family="é" * 60_000))) for n in range(6)]
    pieces = split_entries(entries, 600_000, BundleHeader.fresh(len(entries)))  # the default limit
    assert len(pieces) == 6  # 120 KB sent, 360 KB stored: one a piece

    app = create_connect_app(ConnectSandboxConfig(db=tmp_path / "connect.sqlite3", rate_limit=0))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        answers = [
            await client.post(
                "/fhir/Bundle", content=p.body, headers={"Content-Type": "application/fhir+json"}
            )
            for p in pieces
        ]
        records = (await client.get("/_sandbox/records")).json()

    assert [a.status_code for a in answers] == [200] * 6, [a.text[:200] for a in answers]
    assert records["count"] == 6
