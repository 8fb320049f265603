"""Bundles as bytes: the merged searchset, and splitting it into connect-sized pieces."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from bluebutton.bundles import BundleHeader, split_entries
from bluebutton.errors import EntryTooLargeError
from tests.factories import compact, entry_for, eob_with_entry_size, make_eob


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
