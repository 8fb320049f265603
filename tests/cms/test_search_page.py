"""Reading a search page: the `next` link (the pages themselves are tested through the client)."""

from __future__ import annotations

import pytest

from bluebutton.cms.search_page import next_link


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        pytest.param([{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}], "b", id="next"),
        pytest.param([{"relation": "self", "url": "a"}], None, id="no-next"),
        pytest.param([{"relation": "next", "url": ""}], None, id="empty-next"),
        pytest.param([{"relation": "next"}], None, id="next-without-url"),
        pytest.param(None, None, id="no-links"),
        pytest.param({"relation": "next", "url": "b"}, None, id="links-not-a-list"),
    ],
)
def test_next_link(links: object, expected: str | None) -> None:
    assert next_link(links) == expected
