"""Paging links: which may be followed (origin, base path) and which would fetch a page again."""

from __future__ import annotations

import httpx
import pytest

from bluebutton.cms.paging import PageLog, check_link, page_index, page_key
from bluebutton.cms.search_page import Page
from bluebutton.errors import CmsProtocolError
from tests.factories import FHIR_BASE, PATIENT_ID, page_url

BASE = httpx.URL(FHIR_BASE)
EOB = "ExplanationOfBenefit"

LINKS_ACCEPTED = [
    pytest.param("ExplanationOfBenefit?startIndex=50", id="relative"),
    pytest.param("https://cms.test/v2/fhir/ExplanationOfBenefit?startIndex=50", id="absolute"),
    pytest.param("https://cms.test:443/v2/fhir/ExplanationOfBenefit", id="explicit-default-port"),
    pytest.param("HTTPS://CMS.TEST/v2/fhir/ExplanationOfBenefit", id="upper-case-origin"),
]

LINKS_REFUSED = [
    pytest.param("https://evil.test/v2/fhir/ExplanationOfBenefit?startIndex=50", id="other-host"),
    pytest.param("https://cms.test.evil.test/v2/fhir/ExplanationOfBenefit", id="suffix-host"),
    pytest.param("https://cms.test@evil.test/v2/fhir/ExplanationOfBenefit", id="userinfo-host"),
    pytest.param("//evil.test/v2/fhir/ExplanationOfBenefit", id="scheme-relative"),
    pytest.param("http://cms.test/v2/fhir/ExplanationOfBenefit", id="http-downgrade"),
    pytest.param("https://cms.test:8443/v2/fhir/ExplanationOfBenefit", id="other-port"),
    pytest.param("https://cms.test/v2/o/token/", id="oauth-path"),
    pytest.param("https://cms.test/v2/fhirx/ExplanationOfBenefit", id="prefix-path"),
    pytest.param("https://cms.test/v3/fhir/ExplanationOfBenefit", id="other-version"),
    pytest.param("https://cms.test/v2/fhir/../o/token/", id="dot-segments"),
    pytest.param("https://cms.test/v2/fhir/%2e%2e/o/token/", id="encoded-dot-segments"),
    pytest.param("https://user:password@cms.test/v2/fhir/ExplanationOfBenefit?startIndex=50", id="userinfo"),
    pytest.param("https://user@cms.test/v2/fhir/ExplanationOfBenefit?startIndex=50", id="user-only"),
    pytest.param("https://:password@cms.test/v2/fhir/ExplanationOfBenefit", id="password-only"),
    pytest.param("https://%75ser:pw@cms.test:443/v2/fhir/ExplanationOfBenefit", id="userinfo-encoded"),
]


@pytest.mark.parametrize("link", LINKS_ACCEPTED)
def test_check_link_accepts(link: str) -> None:
    url = check_link(BASE, link)
    assert url.host == "cms.test"
    assert url.path.startswith("/v2/fhir/")


@pytest.mark.parametrize("link", LINKS_REFUSED)
def test_check_link_refuses(link: str) -> None:
    with pytest.raises(CmsProtocolError) as info:
        check_link(BASE, link)
    assert info.value.status_code == 502


def test_userinfo_is_refused_without_repeating_it() -> None:
    with pytest.raises(CmsProtocolError, match="credentials") as info:
        check_link(BASE, "https://alice:s3cret@cms.test/v2/fhir/ExplanationOfBenefit?startIndex=50")
    assert "alice" not in info.value.message
    assert "s3cret" not in info.value.message


# ------------------------------------------------------------------------------- one page, one key

SAME_PAGE = [
    pytest.param(f"{FHIR_BASE}{EOB}?_count=50&patient={PATIENT_ID}&startIndex=50", id="reordered"),
    pytest.param(f"{FHIR_BASE}{EOB}/?startIndex=50&_count=50&patient={PATIENT_ID}", id="trailing-slash"),
    pytest.param(
        f"https://CMS.test:443/v2/fhir/{EOB}?patient={PATIENT_ID}&startIndex=50&_count=50", id="origin"
    ),
    pytest.param(f"{FHIR_BASE}{EOB}?patient=%2D20140000008325&startIndex=50&_count=50", id="encoded"),
]


@pytest.mark.parametrize("link", SAME_PAGE)
def test_the_same_page_written_differently_has_one_key(link: str) -> None:
    assert page_key(check_link(BASE, link)) == page_key(check_link(BASE, page_url(EOB, 50)))


@pytest.mark.parametrize(
    "link",
    [
        pytest.param(page_url(EOB, 100), id="other-index"),
        pytest.param(page_url(EOB, 50, 10), id="other-count"),
        pytest.param(page_url(EOB, 50) + "&type=pde", id="other-filter"),
        pytest.param(page_url("Coverage", 50), id="other-resource"),
    ],
)
def test_other_pages_have_other_keys(link: str) -> None:
    assert page_key(check_link(BASE, link)) != page_key(check_link(BASE, page_url(EOB, 50)))


@pytest.mark.parametrize(
    ("query", "index"),
    [
        pytest.param("startIndex=50", 50, id="v2"),
        pytest.param("_offset=100", 100, id="v3"),
        pytest.param("cursor=abc", None, id="none"),
        pytest.param("startIndex=x", None, id="not-a-number"),
        pytest.param("startIndex=50&_offset=50", None, id="both"),
    ],
)
def test_page_index(query: str, index: int | None) -> None:
    assert page_index(BASE.join(f"{EOB}?{query}")) == index


# ------------------------------------------------------------------------------------ the page log


def _page(entries: int) -> Page:
    return Page(entries=[b"{}"] * entries, total=None, next_url=None)


def _link(url: str) -> httpx.URL:
    return check_link(BASE, url)


def test_log_refuses_a_page_already_claimed() -> None:
    log = PageLog(10)
    log.claim(_link(page_url(EOB, 50)))
    with pytest.raises(CmsProtocolError, match="repeat"):
        log.claim(_link(f"{FHIR_BASE}{EOB}/?patient={PATIENT_ID}&_count=50&startIndex=50"))


def test_log_refuses_an_index_inside_a_fetched_page() -> None:
    log = PageLog(10)
    first = _link(f"{EOB}?_count=50")
    log.claim(first, default_index=0)
    log.fetched(first, _page(50))
    log.claim(_link(page_url(EOB, 50)))
    for start in (0, 1, 49):
        with pytest.raises(CmsProtocolError, match=f"index {start},"):
            log.claim(_link(page_url(EOB, start, 10)))


def test_log_follows_links_without_an_index() -> None:
    log = PageLog(10)
    first = _link(f"{EOB}?_count=50")
    log.claim(first, default_index=0)
    log.fetched(first, _page(50))
    log.claim(_link(f"{EOB}?cursor=abc"))
    log.claim(_link(f"{EOB}?cursor=def"))
    with pytest.raises(CmsProtocolError, match="repeat"):
        log.claim(_link(f"{EOB}?cursor=abc"))


def test_log_counts_pages_against_the_limit() -> None:
    log = PageLog(2)
    log.claim(_link(page_url(EOB, 0)))
    log.claim(_link(page_url(EOB, 50)))
    with pytest.raises(CmsProtocolError, match="BLUEBUTTON_CMS_MAX_PAGES"):
        log.claim(_link(page_url(EOB, 100)))


# ------------------------------------------------------------------------------ pages 2..n by index


def _first_page(total: int | None, link: str) -> tuple[PageLog, Page]:
    log = PageLog(10)
    first_link = _link(f"{EOB}?_count=50&patient={PATIENT_ID}")
    log.claim(first_link, default_index=0)
    first = Page(entries=[b"{}"] * 50, total=total, next_url=link)
    log.fetched(first_link, first)
    return log, first


def test_plan_by_index_claims_pages_2_to_n() -> None:
    log, first = _first_page(155, page_url(EOB, 50))
    planned = log.plan(first, _link(page_url(EOB, 50)))
    assert [page_index(link) for link in planned] == [50, 100, 150]
    assert all(link.params["patient"] == PATIENT_ID for link in planned)
    with pytest.raises(CmsProtocolError, match="index 100"):
        log.claim(_link(f"{EOB}?startIndex=100"))


def test_plan_checks_the_page_limit_before_building_links() -> None:
    """A hostile `total` must not make the service build billions of links."""
    log, first = _first_page(10**15, page_url(EOB, 50))
    with pytest.raises(CmsProtocolError, match="BLUEBUTTON_CMS_MAX_PAGES"):
        log.plan(first, _link(page_url(EOB, 50)))


@pytest.mark.parametrize(
    ("total", "link"),
    [
        pytest.param(None, page_url(EOB, 50), id="no-total"),
        pytest.param(155, f"{EOB}?cursor=abc", id="no-index"),
        pytest.param(155, page_url(EOB, 40), id="index-not-after-the-first-page"),
        pytest.param(155, page_url(EOB, 50, 0), id="count-0"),
        pytest.param(155, page_url(EOB, 50).replace("_count=50", "_count=x"), id="count-not-a-number"),
        pytest.param(50, page_url(EOB, 50), id="one-page"),
    ],
)
def test_no_plan(total: int | None, link: str) -> None:
    log, first = _first_page(total, link)
    assert log.plan(first, _link(link)) == []
