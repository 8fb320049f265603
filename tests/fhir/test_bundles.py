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
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from pydantic import ValidationError

from bluebutton.errors import EntryTooLargeError
from bluebutton.fhir.bundles import (
    CONNECT_RECORD_BYTES,
    MAX_BUNDLE_BYTES,
    BundleHeader,
    connect_size,
    split_entries,
)
from bluebutton.outbound.client import USER_AGENT
from bluebutton.sandbox.connect.app import ConnectSandboxConfig, create_connect_app
from bluebutton.sandbox.connect.reserialise import connect_json
from tests.factories import compact, entry_for, eob_with_entry_size, make_eob, make_patient, make_settings


def entries_of_sizes(sizes: list[int]) -> list[bytes]:
    return [compact(entry_for(eob_with_entry_size(n, size))) for n, size in enumerate(sizes)]


def overhead() -> int:
    """`connect_size` of a wrapped Bundle besides its entries and the ", " between them."""
    return BundleHeader.fresh(1).connect_overhead()


def stored_size(body: bytes) -> int:
    """Independent of the product: the JSON connect 0.42.0 stores for `body`, as the emulator
    re-serialises it (typed by the validated model)."""
    parsed = orjson.loads(body)
    return len(connect_json(Bundle.model_validate(parsed), parsed))


def stored_entry_size(entry: bytes) -> int:
    """The same for one entry (its JSON inside the stored Bundle)."""
    parsed = orjson.loads(entry)
    return len(connect_json(BundleEntry.model_validate(parsed), parsed))


def min_pieces(sizes: list[int], limit: int, head: int) -> int:
    """Fewest ordered pieces under `limit` (dynamic programming, independent of the product)."""
    best = [0] + [10**9] * len(sizes)
    for stop in range(1, len(sizes) + 1):
        for start in range(stop):
            size = head + sum(sizes[start:stop]) + 2 * (stop - start - 1)
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
        sizes = [connect_size(e) for e in entries[piece.start : piece.stop]]
        assert stored_size(piece.body) <= overhead() + sum(sizes) + 2 * (len(sizes) - 1) <= limit
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
    sizes = [connect_size(e) for e in entries]
    limit = overhead() + sizes[0] + 2 + sizes[1]
    assert sizes[2] + sizes[3] <= sizes[0] + sizes[1]
    pieces = split_entries(entries, limit, BundleHeader.fresh(4))
    assert [(p.start, p.stop) for p in pieces] == [(0, 2), (2, 4)]
    assert split_entries(entries, limit - 1, BundleHeader.fresh(4))[0].stop == 1


@pytest.mark.parametrize("seed", range(6))
def test_as_few_pieces_as_fit(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1500, 7000) for _ in range(rng.randint(5, 14))]
    limit = rng.choice([10_000, 12_345, 20_000])
    entries = entries_of_sizes(sizes)
    bundles = _check_pieces(entries, limit, BundleHeader.fresh(len(entries)))
    assert len(bundles) == min_pieces([connect_size(e) for e in entries], limit, overhead())


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
    entries = entries_of_sizes([2000, 9000, 2000])
    limit = overhead() + connect_size(entries[1])
    bundles = _check_pieces(entries, limit, BundleHeader.fresh(3))
    assert [len(b["entry"]) for b in bundles] == [1, 1, 1]
    with pytest.raises(EntryTooLargeError):
        split_entries(entries, limit - 1, BundleHeader.fresh(3))


def test_sizes_measured_elsewhere_are_used_as_given() -> None:
    entries = entries_of_sizes([2000] * 4)
    pieces = split_entries(entries, 10_000, BundleHeader.fresh(4), sizes=[6000, 6000, 6000, 6000])
    assert [(p.start, p.stop) for p in pieces] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="3 sizes for 4 entries"):
        split_entries(entries, 10_000, BundleHeader.fresh(4), sizes=[1, 2, 3])


# --- sizes as connect stores them (re-serialised by fhir.resources 6.4.0 and json.dumps) ---------------


ALPHABET = 'aZ09 -."\\\n\t\x01\x7fé\u00ff\u0100€\u4e2d\uffff😀\U0010ffff:,[]{}'


def _bound_is_tight(entry: bytes) -> None:
    """connect_size never falls short of what connect stores, and exceeds it by little."""
    stored = stored_entry_size(entry)
    assert stored <= connect_size(entry) <= stored * 1.03 + 40


@pytest.mark.parametrize("seed", range(5))
def test_connect_size_bounds_what_connect_stores_for_any_text(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(3, 200)))
        _bound_is_tight(compact(entry_for(make_patient(family=text, given=text[::-1]))))


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
    def size(family: str) -> int:
        return connect_size(compact(entry_for(make_patient(family="Smith" + family))))

    assert size(text) - size("a" * len(text.encode())) == growth


def test_escapes_already_in_the_bytes_count_as_they_stand() -> None:
    escaped = json.dumps(entry_for(make_patient(family="é" * 10)), separators=(",", ":")).encode()
    assert escaped.isascii()
    assert connect_size(escaped) == connect_size(compact(entry_for(make_patient(family="é" * 10))))


def test_layout_does_not_matter_separators_are_counted_as_connect_writes_them() -> None:
    resource = make_eob(3)
    compact_entry = compact(entry_for(resource))
    pretty = json.dumps(entry_for(resource), indent=4).encode()
    spaced = json.dumps(entry_for(resource)).encode()  # already ", " and ": "
    assert connect_size(compact_entry) == connect_size(pretty) == connect_size(spaced)
    assert connect_size(compact_entry) >= len(spaced)
    _bound_is_tight(compact_entry)


def _with_extensions(values: list[dict[str, Any]]) -> bytes:
    resource = make_patient()
    resource["extension"] = [{"url": f"http://x/{n}", **value} for n, value in enumerate(values)]
    return compact(entry_for(resource))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"valueDecimal": 2}, id="integer-decimal"),
        pytest.param({"valueDecimal": 0.978}, id="decimal"),
        pytest.param({"valueDecimal": 1e15}, id="exponent"),
        pytest.param({"valueDecimal": 12345678901234567}, id="17-digits"),
        pytest.param({"valueDecimal": "1e15"}, id="decimal-as-text"),
        pytest.param({"valueDecimal": "12345678901234567"}, id="digits-as-text"),
        pytest.param({"valueInteger": 1e9}, id="integer-as-exponent"),
        pytest.param({"valueBoolean": 0}, id="boolean-as-number"),
        pytest.param({"valueBoolean": "n"}, id="boolean-as-letter"),
        pytest.param({"valueBoolean": "no"}, id="boolean-as-word"),
        pytest.param({"valueDateTime": "2024-03-01T10:00:00.1Z"}, id="date-time"),
        pytest.param({"valueInstant": "2024-03-01T10:00:00Z"}, id="instant"),
        pytest.param({"valueTime": "10:00:00.1"}, id="time"),
        pytest.param({"valueBase64Binary": "QUJD" * 50}, id="base64"),
        pytest.param({"valueUuid": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}, id="uuid"),
    ],
)
def test_connect_size_bounds_every_value_connect_rewrites(value: dict[str, Any]) -> None:
    entry = _with_extensions([value] * 20)
    assert stored_entry_size(entry) <= connect_size(entry)


@pytest.mark.parametrize(
    "literal",
    [b"2", b"1e15", b"1E+15", b"-0", b"1.5e-7", b"12345678901234567", b"123456789012345678.5"],
)
def test_connect_size_bounds_number_literals_as_sent(literal: bytes) -> None:
    # orjson would write these back differently, so they are spliced into the bytes as CMS may send them.
    entry = _with_extensions([{"valueDecimal": 7.25}] * 10).replace(b"7.25", literal)
    assert stored_entry_size(entry) <= connect_size(entry)
    assert stored_entry_size(entry) > len(json.dumps(orjson.loads(entry))) or literal == b"1.5e-7"


def test_pieces_fit_as_connect_stores_them_not_as_sent() -> None:
    # 2,000 bytes of UTF-8 that connect writes as 6,000: by UTF-8 four fit in 10,000, really one.
    entries = [compact(entry_for(make_patient(f"p{n}", family="é" * 1000))) for n in range(6)]
    assert all(len(e) < 2500 < 6000 < connect_size(e) for e in entries)
    limit = 10_000
    merged = BundleHeader.fresh(len(entries))

    pieces = split_entries(entries, limit, merged)

    assert [(p.start, p.stop) for p in pieces] == [(n, n + 1) for n in range(6)]
    for piece in pieces:
        assert stored_size(piece.body) <= limit
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
    resource = {**make_patient(family="x" * 20_000), "id": "x" * 65 + '"<script>'}
    entry = compact(entry_for(resource))
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


def adversarial_entry(number: int) -> bytes:
    """Valid FHIR where connect's record grows most: integer decimals (`2` → `2.0`), exponents,
    times in UTC with milliseconds, booleans given as numbers, non-ASCII text of every width."""
    resource = make_patient(f"adv-{number}", family="Müller–東京😀" * 40, given="Ærø" * 40)
    resource["extension"] = [_adversarial_extension(n) for n in range(400)]
    return compact(entry_for(resource))


def _adversarial_extension(n: int) -> dict[str, Any]:
    kinds: list[dict[str, Any]] = [
        {"valueDecimal": n % 3},
        {"valueDecimal": "1e15"},
        {"valueDateTime": "2024-03-01T10:00:00.1Z"},
        {"valueBoolean": 0},
        {"valueQuantity": {"value": n, "unit": "é"}},
    ]
    return {"url": f"http://x/{n}", **kinds[n % 5]}


async def _post_all(db: Path, bodies: list[bytes]) -> tuple[list[httpx.Response], list[int]]:
    app = create_connect_app(ConnectSandboxConfig(db=db, rate_limit=0))
    headers = {"Content-Type": "application/fhir+json", "User-Agent": USER_AGENT}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        answers = [await client.post("/fhir/Bundle", content=body, headers=headers) for body in bodies]
        records = (await client.get("/_sandbox/records")).json()["records"]
    return answers, [r["bytes"] for r in records]


async def test_adversarial_pieces_at_the_largest_allowed_limit_are_all_stored(tmp_path: Path) -> None:
    """The largest setting allowed (MAX_BUNDLE_BYTES) never draws connect's 500, however much
    connect's re-serialisation grows the data; sized as sent, the same data is refused."""
    entries = [adversarial_entry(n) for n in range(60)]
    stored = sum(stored_entry_size(e) for e in entries)
    assert stored > 1.25 * sum(len(e) for e in entries)  # connect writes it a quarter larger

    pieces = split_entries(entries, MAX_BUNDLE_BYTES, BundleHeader.fresh(len(entries)))
    answers, record_bytes = await _post_all(tmp_path / "sized.sqlite3", [p.body for p in pieces])

    assert [a.status_code for a in answers] == [200] * len(pieces), [a.text[:200] for a in answers]
    assert len(pieces) >= 3
    assert max(record_bytes) <= CONNECT_RECORD_BYTES
    assert max(record_bytes) > 0.9 * CONNECT_RECORD_BYTES  # the bound costs this data 5 %, not more

    # Sized by the bytes sent (what connect_size counted before), the same limit draws the 500.
    as_sent = split_entries(
        entries, MAX_BUNDLE_BYTES, BundleHeader.fresh(len(entries)), [len(e) for e in entries]
    )
    refused, _ = await _post_all(tmp_path / "as-sent.sqlite3", [p.body for p in as_sent])
    assert 500 in [a.status_code for a in refused]


async def test_default_limit_pieces_of_claims_are_all_stored(tmp_path: Path) -> None:
    entries = entries_of_sizes([30_000] * 50)
    pieces = split_entries(entries, 600_000, BundleHeader.fresh(len(entries)))
    answers, _ = await _post_all(tmp_path / "connect.sqlite3", [p.body for p in pieces])
    assert [a.status_code for a in answers] == [200] * len(pieces)
    for piece in pieces:
        assert stored_size(piece.body) <= 600_000


def test_the_setting_cannot_exceed_one_connect_record() -> None:
    assert make_settings(lfh_max_bundle_bytes=MAX_BUNDLE_BYTES).lfh_max_bundle_bytes == 747_750
    with pytest.raises(ValidationError, match=r"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES=747751 is more than 747750"):
        make_settings(lfh_max_bundle_bytes=MAX_BUNDLE_BYTES + 1)
