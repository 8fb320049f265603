"""The whole product over real sockets: authorize → login → consent → callback → `/bluebutton/fhir`,
then what connect stored, read back from connect and compared with what CMS served; refresh,
withheld demographics, denial, invalid CMS data, and every injected fault with its documented answer.

"Nothing stored twice or half" is checked on connect's record log (`/_sandbox/records`): the records
a request added are exactly the ones its `X-LFH-*` headers (or its OperationOutcome) name.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from html.parser import HTMLParser
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import BundleEntry

from bluebutton.sandbox.connect.reserialise import connect_json
from bluebutton.sandbox.tools.stack import ca_context, wait_ready
from tests.e2e.harness import Harness, diagnostics, header_list, outcome

pytestmark = pytest.mark.usefixtures("healthy")

EOB = "ExplanationOfBenefit"
LFH_MAX_BUNDLE_BYTES = 600_000  # the connector's default BLUEBUTTON_LFH_MAX_BUNDLE_BYTES
CMS_RETRY_ATTEMPTS = 4  # the connector's default BLUEBUTTON_CMS_RETRY_ATTEMPTS

# Documented users of the CMS emulator (bluebutton/sandbox/cms/data.py).
NO_CLAIMS, SEVEN_CLAIMS, TWO_PAGES, FOUR_PAGES, INVALID = 1, 2, 3, 4, 29_900
CLAIM_COUNTS = {NO_CLAIMS: 0, SEVEN_CLAIMS: 7, TWO_PAGES: 52, FOUR_PAGES: 200}


# ------------------------------------------------------------------------------------------ helpers


def location_of(record: dict[str, Any]) -> str:
    return f"FHIR-R4:0:{record['offset']}"


def new_records(e2e: Harness, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    known = {record["offset"] for record in before}
    return [record for record in e2e.records() if record["offset"] not in known]


def as_connect_stores(entry: dict[str, Any]) -> Any:
    """What connect 0.42.0 stores for an entry CMS served: it re-serialises (decimals as floats,
    times to the microsecond, ...), so the served side goes through the same rules to compare."""
    return json.loads(connect_json(BundleEntry.model_validate(entry), entry))


def assert_same_entries(
    stored: list[dict[str, Any]], served: list[dict[str, Any]], what: str, *, in_connect: bool = True
) -> None:
    """Entry by entry, so a difference names its index instead of printing megabytes; `in_connect`:
    `stored` was read back from connect, so it is compared with what connect makes of `served`."""
    assert len(stored) == len(served), f"{what}: {len(stored)} entries, CMS served {len(served)}"
    for index, (mine, theirs) in enumerate(zip(stored, served, strict=True)):
        if mine != (as_connect_stores(theirs) if in_connect else theirs):
            resource = theirs.get("resource", {})
            name = f"{resource.get('resourceType')}/{resource.get('id')}"
            pytest.fail(f"{what}: entry {index} ({name}) differs from what CMS served")


def assert_stored_exactly(
    e2e: Harness,
    before: list[dict[str, Any]],
    locations: list[str],
    uuids: list[str],
    served: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """connect gained exactly the named records, and they hold, in order, what CMS served."""
    added = new_records(e2e, before)
    assert [(location_of(r), r["uuid"]) for r in added] == list(zip(locations, uuids, strict=True))
    bundles = []
    for location, record_uuid in zip(locations, uuids, strict=True):
        record = e2e.read_back(location)
        assert record.envelope["uuid"] == record_uuid
        assert record.envelope["data_format"] == "FHIR-R4"
        bundle = record.bundle
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "searchset"
        assert bundle["total"] == len(served)
        bundles.append(bundle)
    if len(bundles) > 1:
        for bundle in bundles:
            size = len(orjson.dumps(bundle))
            assert size <= LFH_MAX_BUNDLE_BYTES, f"a piece of {size} bytes of compact JSON"
    entries = [entry for bundle in bundles for entry in bundle.get("entry", [])]
    assert_same_entries(entries, served, "stored in connect")
    return bundles


def assert_transfer(
    e2e: Harness, response: httpx.Response, token: str, resource_type: str, before: list[dict[str, Any]]
) -> list[str]:
    """A successful `/bluebutton/fhir`: headers, answer and connect's records all agree with CMS."""
    assert response.status_code == 200, response.text
    locations = header_list(response, "X-LFH-Data-Record-Locations")
    uuids = header_list(response, "X-LFH-Record-UUIDs")
    assert len(locations) == len(uuids) == int(response.headers["X-LFH-Bundle-Count"])
    served = e2e.cms_entries(token, resource_type)
    if not served:  # an empty search result is not sent to connect
        assert locations == []
        assert "empty search result" in response.headers["X-LFH-Skipped"]
        assert new_records(e2e, before) == []
        answer = response.json()
        if "resourceType" in answer:  # return_cms=true: the empty merged Bundle
            assert answer.get("entry", []) == []
        else:
            assert answer["bundle_count"] == 0
        return locations
    assert len(locations) >= 1
    bundles = assert_stored_exactly(e2e, before, locations, uuids, served)

    if response.headers["content-type"].startswith("application/fhir+json"):  # return_cms=true
        merged = response.json()
        assert merged["resourceType"] == "Bundle"
        assert merged["type"] == "searchset"
        assert merged["total"] == len(served)
        assert_same_entries(merged.get("entry", []), served, "return_cms answer", in_connect=False)
        return locations

    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    if len(locations) == 1:  # connect's envelope, unchanged
        assert answer["uuid"] == uuids[0]
        assert answer["data_record_location"] == locations[0]
        assert answer["status"] == "success"
        assert answer["data"] == e2e.read_back(locations[0]).envelope["data"]
        return locations
    assert answer["bundle_count"] == len(locations)
    assert answer["entry_count"] == len(served)
    first = 0
    pieces = zip(answer["bundles"], locations, uuids, bundles, strict=True)
    for piece, location, record_uuid, bundle in pieces:
        assert piece["first_entry"] == first
        assert piece["entry_count"] == len(bundle["entry"])
        assert piece["envelope"]["data_record_location"] == location
        assert piece["envelope"]["uuid"] == record_uuid
        first += piece["entry_count"]
    assert first == len(served)
    return locations


def assert_nothing_stored(e2e: Harness, before: list[dict[str, Any]], response: httpx.Response) -> None:
    assert new_records(e2e, before) == []
    assert "X-LFH-Data-Record-Locations" not in response.headers


# ------------------------------------------------------------------------------------ the full flow


@pytest.mark.parametrize("resource_type", ["Patient", "Coverage", EOB])
@pytest.mark.parametrize(
    "user",
    [
        pytest.param(NO_CLAIMS, id="BBUser00001-0-claims"),
        pytest.param(SEVEN_CLAIMS, id="BBUser00002-7-claims"),
        pytest.param(TWO_PAGES, id="BBUser00003-52-claims"),
        pytest.param(FOUR_PAGES, id="BBUser00004-200-claims"),
    ],
)
def test_authorize_then_fetch_stores_what_cms_served(e2e: Harness, user: int, resource_type: str) -> None:
    tokens = e2e.tokens(user)
    assert tokens["patient"] == e2e.cms_user(user)["patient"]
    before = e2e.records()

    response = e2e.fhir(tokens["access_token"], resource_type)

    locations = assert_transfer(e2e, response, tokens["access_token"], resource_type, before)
    if resource_type == EOB:
        assert len(e2e.cms_entries(tokens["access_token"], EOB)) == CLAIM_COUNTS[user]
    if user == FOUR_PAGES and resource_type == EOB:
        assert len(locations) > 4  # 200 claims of ~50 KB: more pieces than CMS pages
    if resource_type == "Patient":
        assert response.json()["data"]  # one Bundle: connect's envelope
        patient = e2e.read_back(locations[0]).bundle["entry"][0]["resource"]
        assert patient["id"] == tokens["patient"]


@pytest.mark.parametrize("user", [SEVEN_CLAIMS, FOUR_PAGES], ids=["BBUser00002", "BBUser00004"])
def test_return_cms_answers_the_merged_bundle_and_still_stores_it(e2e: Harness, user: int) -> None:
    token = e2e.tokens(user)["access_token"]
    before = e2e.records()

    response = e2e.fhir(token, EOB, return_cms=True)

    assert_transfer(e2e, response, token, EOB, before)
    assert response.json()["total"] == CLAIM_COUNTS[user]


def test_return_cms_false_is_the_default(e2e: Harness) -> None:
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    before = e2e.records()

    response = e2e.fhir(token, "Coverage", return_cms=False)

    assert_transfer(e2e, response, token, "Coverage", before)
    assert response.json()["data_format"] == "FHIR-R4"


# ----------------------------------------------------------------------------------- token changes


def test_refresh_then_fetch(e2e: Harness) -> None:
    tokens = e2e.tokens(SEVEN_CLAIMS)
    assert e2e.fhir(tokens["access_token"], "Coverage").status_code == 200

    refreshed = e2e.refresh(tokens["refresh_token"])

    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["access_token"] != tokens["access_token"]
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["patient"] == tokens["patient"]

    before = e2e.records()
    stale = e2e.fhir(tokens["access_token"], "Coverage")
    assert stale.status_code == 401
    assert stale.headers["WWW-Authenticate"].startswith("Bearer")
    assert "POST /bluebutton/refresh" in diagnostics(stale)
    assert_nothing_stored(e2e, before, stale)

    fresh = e2e.fhir(new["access_token"], EOB)
    assert_transfer(e2e, fresh, new["access_token"], EOB, before)

    reused = e2e.refresh(tokens["refresh_token"])  # CMS refresh tokens are single-use
    assert reused.status_code == 401, reused.text


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.token = ""
        self._in_token = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element_id = dict(attrs).get("id")
        if element_id:
            self.ids.add(element_id)
        self._in_token = element_id == "access-token"

    def handle_data(self, data: str) -> None:
        if self._in_token:
            self.token += data.strip()

    def handle_endtag(self, tag: str) -> None:
        self._in_token = False


def test_withheld_demographics_refuse_patient_but_claims_flow(e2e: Harness) -> None:
    callback = e2e.authorize_in_html(TWO_PAGES, share_demographics=False)

    assert callback.status_code == 200
    assert callback.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(callback.text)
    assert "demographics-warning" in page.ids
    token = page.token
    assert token

    before = e2e.records()
    patient = e2e.fhir(token, "Patient")
    assert patient.status_code == 403
    assert "declined to share demographic data" in diagnostics(patient)
    assert_nothing_stored(e2e, before, patient)

    for resource_type in ("Coverage", EOB):
        before = e2e.records()
        assert_transfer(e2e, e2e.fhir(token, resource_type), token, resource_type, before)


def test_shared_demographics_page_has_no_warning(e2e: Harness) -> None:
    callback = e2e.authorize_in_html(SEVEN_CLAIMS, share_demographics=True)

    assert callback.status_code == 200
    page = _Page()
    page.feed(callback.text)
    assert "demographics-warning" not in page.ids
    assert "access-token" in page.ids


def test_deny_at_consent_is_403(e2e: Harness) -> None:
    callback = e2e.authorize(SEVEN_CLAIMS, allow=False)

    assert callback.status_code == 403
    issues = outcome(callback)
    assert issues[0]["code"] == "forbidden"
    assert "access_denied" in issues[0]["diagnostics"]


# ---------------------------------------------------------------------------------- invalid CMS data


def test_invalid_claims_are_named_and_nothing_is_stored(e2e: Harness) -> None:
    token = e2e.tokens(INVALID)["access_token"]
    invalid = e2e.cms_user(INVALID)["invalid_claims"]  # EOB id -> FHIR path
    assert len(invalid) == 3
    served = e2e.cms_entries(token, EOB)
    index_of = {entry["resource"]["id"]: n for n, entry in enumerate(served)}
    before = e2e.records()

    response = e2e.fhir(token, EOB)

    assert response.status_code == 422
    issues = outcome(response)
    assert "nothing was sent to LinuxForHealth connect" in issues[0]["diagnostics"]
    problems = issues[1:]
    assert len(problems) == len(invalid)
    for eob_id, path in invalid.items():
        element = path.removeprefix(f"{EOB}.")
        expression = f"Bundle.entry[{index_of[eob_id]}].resource.{element}"
        matching = [issue for issue in problems if issue.get("expression") == [expression]]
        assert len(matching) == 1, f"no issue for {eob_id} at {expression}: {problems}"
        assert f"{EOB}/{eob_id}" in matching[0]["diagnostics"]
    assert_nothing_stored(e2e, before, response)


# ------------------------------------------------------------------------------------- CMS faults


def test_cms_429_burst_is_retried(e2e: Harness) -> None:
    token = e2e.tokens(TWO_PAGES)["access_token"]
    before = e2e.records()
    e2e.cms_faults(rate_limit=2, retry_after=0)

    response = e2e.fhir(token, EOB)

    assert e2e.cms_faults_now()["rate_limit"] == 0
    assert_transfer(e2e, response, token, EOB, before)


@pytest.mark.parametrize(
    ("burst", "retry_after", "answered_retry_after", "attempts"),
    [
        # longer than the connector's attempts: every attempt meets a 429
        pytest.param(CMS_RETRY_ATTEMPTS + 2, 0, "1", CMS_RETRY_ATTEMPTS, id="burst-outlasts-attempts"),
        # CMS asks for more time than the retry budget (30 s): no point waiting
        pytest.param(3, 40, "40", 1, id="retry-after-beyond-budget"),
    ],
)
def test_cms_429_long_burst_is_429_with_retry_after(
    e2e: Harness, burst: int, retry_after: int, answered_retry_after: str, attempts: int
) -> None:
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    before = e2e.records()
    e2e.cms_faults(rate_limit=burst, retry_after=retry_after)

    response = e2e.fhir(token, EOB)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == answered_retry_after
    assert outcome(response)[0]["code"] == "throttled"
    assert e2e.cms_faults_now()["rate_limit"] == burst - attempts
    assert_nothing_stored(e2e, before, response)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_cms_5xx_burst_shorter_than_the_attempts_succeeds(e2e: Harness, status: int) -> None:
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    before = e2e.records()
    e2e.cms_faults(server_errors=CMS_RETRY_ATTEMPTS - 1, server_error_status=status)

    response = e2e.fhir(token, EOB)

    assert e2e.cms_faults_now()["server_errors"] == 0
    assert_transfer(e2e, response, token, EOB, before)


def test_cms_5xx_burst_longer_than_the_attempts_is_502(e2e: Harness) -> None:
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    before = e2e.records()
    e2e.cms_faults(server_errors=CMS_RETRY_ATTEMPTS + 2, server_error_status=503)

    response = e2e.fhir(token, EOB)

    assert response.status_code == 502
    assert "Blue Button failed with HTTP 503" in diagnostics(response)
    assert e2e.cms_faults_now()["server_errors"] == 2
    assert_nothing_stored(e2e, before, response)


def test_cms_dropped_connections_are_retried(e2e: Harness) -> None:
    token = e2e.tokens(TWO_PAGES)["access_token"]
    before = e2e.records()
    e2e.cms_faults(drop_connections=CMS_RETRY_ATTEMPTS - 1)

    response = e2e.fhir(token, EOB)

    assert e2e.cms_faults_now()["drop_connections"] == 0
    assert_transfer(e2e, response, token, EOB, before)


def test_cms_foreign_next_link_is_502_and_nothing_stored(e2e: Harness) -> None:
    token = e2e.tokens(TWO_PAGES)["access_token"]
    before = e2e.records()
    e2e.cms_faults(foreign_next_link=True)

    response = e2e.fhir(token, EOB)

    assert response.status_code == 502
    text = diagnostics(response)
    assert "evil.example.com" in text
    assert "without sending the token there" in text
    assert_nothing_stored(e2e, before, response)


def test_cms_failing_page_is_502_and_nothing_stored(e2e: Harness) -> None:
    token = e2e.tokens(TWO_PAGES)["access_token"]
    before = e2e.records()
    e2e.cms_faults(fail_page=50)  # the second page of 50

    response = e2e.fhir(token, EOB)

    assert response.status_code == 502
    assert "Blue Button failed with HTTP 500" in diagnostics(response)
    assert_nothing_stored(e2e, before, response)


# ---------------------------------------------------------------------------------- connect faults

STORED_ISSUE = re.compile(
    r"^stored: Bundle (\d+) of (\d+), entries (\d+)-(\d+), uuid (\S+), data_record_location (\S+)$"
)
LOST_ISSUE = re.compile(r"^not stored: entries (\d+)-(\d+) \(Bundles (\d+)-(\d+) of (\d+)\)")


def test_connect_failing_midway_reports_exactly_what_it_stored(e2e: Harness) -> None:
    token = e2e.tokens(TWO_PAGES)["access_token"]
    served = e2e.cms_entries(token, EOB)
    before = e2e.records()
    e2e.connect_faults(fail_after=2)

    response = e2e.fhir(token, EOB)

    assert response.status_code == 502
    issues = outcome(response)
    assert issues[0]["code"] == "incomplete"
    stored = [m for issue in issues if (m := STORED_ISSUE.match(issue["diagnostics"]))]
    lost = [m for issue in issues if (m := LOST_ISSUE.match(issue["diagnostics"]))]
    assert len(stored) == 2
    assert len(lost) == 1
    pieces = int(stored[0][2])
    assert pieces > 2
    locations = [m[6] for m in stored]
    uuids = [m[5] for m in stored]
    assert header_list(response, "X-LFH-Data-Record-Locations") == locations
    assert header_list(response, "X-LFH-Record-UUIDs") == uuids
    assert int(stored[0][3]) == 0
    assert int(stored[1][3]) == int(stored[0][4]) + 1
    kept = int(stored[1][4]) + 1
    assert lost[0].groups() == (str(kept), str(len(served) - 1), "3", str(pieces), str(pieces))
    assert "Object of type Bundle is not JSON serializable" in issues[-1]["diagnostics"]
    assert "could not connect" not in diagnostics(response)  # an answer of connect's, not "down"
    added = new_records(e2e, before)
    assert [(location_of(r), r["uuid"]) for r in added] == list(zip(locations, uuids, strict=True))
    entries = [entry for location in locations for entry in e2e.read_back(location).bundle["entry"]]
    assert_same_entries(entries, served[:kept], "stored before connect failed")

    e2e.connect_faults()
    before = e2e.records()
    assert_transfer(e2e, e2e.fhir(token, EOB), token, EOB, before)  # re-running completes it


def test_a_retry_with_the_same_idempotency_key_stores_only_what_is_missing(e2e: Harness) -> None:
    token = e2e.tokens(FOUR_PAGES)["access_token"]
    served = e2e.cms_entries(token, EOB)
    key = str(uuid.uuid4())
    before = e2e.records()
    e2e.connect_faults(fail_after=2)

    failed = e2e.fhir(token, EOB, idempotency_key=key)

    assert failed.status_code == 502, failed.text
    stored_first = header_list(failed, "X-LFH-Data-Record-Locations")
    assert len(stored_first) == 2
    e2e.connect_faults()

    retried = e2e.fhir(token, EOB, idempotency_key=key)

    assert retried.status_code == 200, retried.text
    locations = header_list(retried, "X-LFH-Data-Record-Locations")
    assert locations[:2] == stored_first
    assert_stored_exactly(e2e, before, locations, header_list(retried, "X-LFH-Record-UUIDs"), served)

    after = e2e.records()
    replayed = e2e.fhir(token, EOB, idempotency_key=key)
    assert replayed.status_code == 200
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == retried.content
    assert new_records(e2e, after) == []


def test_a_caller_that_hangs_up_stops_the_forwarding(e2e: Harness) -> None:
    """A real client closing its socket while connect holds the first Bundle's answer: the
    connector waits for that answer, starts no further POST, and logs what it stored (499)."""
    token = e2e.tokens(FOUR_PAGES)["access_token"]  # 200 claims: more than four Bundles
    before = e2e.records()
    e2e.connect_faults(latency_ms=2000)  # each record is stored, then answered 2 s later
    log = e2e.stack.log_dir / "connector.log" if e2e.stack.log_dir else None
    assert log is not None
    url = httpx.URL(e2e.stack.connector_url)
    request = (
        f"GET /bluebutton/fhir?resource_type={EOB} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    raw = socket.create_connection((url.host, url.port), timeout=30)
    caller = ca_context().wrap_socket(raw, server_hostname=url.host)
    try:
        caller.sendall(request)
        for _ in range(600):  # until connect has stored the first Bundle (bounded)
            if len(new_records(e2e, before)) >= 1:
                break
            time.sleep(0.05)
    finally:
        caller.close()
    for _ in range(600):  # until the connector has given up on the request (bounded)
        if " GET /bluebutton/fhir 499 " in log.read_text(errors="replace"):
            break
        time.sleep(0.05)

    text = log.read_text(errors="replace")
    assert " GET /bluebutton/fhir 499 " in text
    assert "caller left" in text
    added = new_records(e2e, before)
    assert 1 <= len(added) <= 3  # the Bundle in flight when the caller left (a full pull is 5+)
    stopped = [line for line in text.splitlines() if "caller left; stopped" in line][-1]
    assert f"stored {len(added)} of " in stopped
    assert all(record["uuid"] in stopped for record in added)
    assert token not in text


def test_connect_down_is_502_could_not_connect_and_nothing_stored(e2e: Harness) -> None:
    """connect down refuses connections (its port is closed), which the connector reports as such,
    not as an HTTP error of connect's."""
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    before = e2e.records()
    e2e.connect_faults(down=True)
    with pytest.raises(httpx.ConnectError):  # refused, not an HTTP answer
        e2e.client.get(f"{e2e.stack.connect_url}/status")

    response = e2e.fhir(token, EOB)

    assert response.status_code == 502
    text = diagnostics(response)
    assert "could not connect to LinuxForHealth connect" in text
    assert "HTTP 500" not in text and "JSON serializable" not in text
    assert_nothing_stored(e2e, before, response)

    e2e.connect_faults()
    assert_transfer(e2e, e2e.fhir(token, EOB), token, EOB, before)


def test_connect_crashed_is_502_and_its_records_survive_a_restart(e2e: Harness) -> None:
    token = e2e.tokens(SEVEN_CLAIMS)["access_token"]
    stack = e2e.stack
    before = e2e.records()
    process = stack.processes["connect"]
    process.kill()  # a crash: SIGKILL, no graceful shutdown
    process.wait(timeout=10)
    try:
        response = e2e.fhir(token, EOB)
    finally:
        stack.launch("connect", *stack.commands["connect"])
        wait_ready(stack.ready_url("connect"), stack.processes["connect"])

    assert response.status_code == 502
    text = diagnostics(response)
    assert "could not connect to LinuxForHealth connect" in text
    assert e2e.records() == before  # nothing lost, nothing added
    assert_transfer(e2e, e2e.fhir(token, EOB), token, EOB, before)


def test_connect_rate_limit_is_absorbed_and_each_piece_stored_once(e2e: Harness) -> None:
    """connect's rate-limit 429 met during a transfer of 18+ pieces: each refused piece is resent,
    every piece stored exactly once.

    connect is told to refuse the next three POSTs with its 429 whatever the clock
    (`throttle_next`), so the 429 happens on a fast machine and on a loaded one alike; the limiter's
    one-second window itself is tested with a fake clock in tests/sandbox.
    """
    token = e2e.tokens(FOUR_PAGES)["access_token"]
    before = e2e.records()
    e2e.connect_faults(throttle_next=3)

    response = e2e.fhir(token, EOB)

    assert e2e.connect_faults_now()["throttle_next"] == 0, "connect did not answer 429 three times"
    locations = assert_transfer(e2e, response, token, EOB, before)
    assert len(locations) >= 18


# ------------------------------------------------------------------------ the non-browser login


def run_login(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.login", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_login_command_prints_a_token_set_that_pulls(e2e: Harness) -> None:
    user = 42  # the README's user
    done = run_login(f"BBUser{user:05d}", "--connector", e2e.stack.connector_url)

    assert done.returncode == 0, done.stderr
    tokens = json.loads(done.stdout)
    assert {"access_token", "refresh_token", "patient", "scope"} <= set(tokens)
    assert tokens["patient"] == e2e.cms_user(user)["patient"] == "-19990000000043"
    before = e2e.records()
    response = e2e.fhir(tokens["access_token"], EOB, patient=tokens["patient"])
    assert_transfer(e2e, response, tokens["access_token"], EOB, before)


def test_login_command_withholding_demographics_gets_403_for_patient(e2e: Harness) -> None:
    done = run_login("BBUser00043", "--connector", e2e.stack.connector_url, "--withhold-demographics")

    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)["access_token"]
    assert e2e.fhir(token, "Patient").status_code == 403


def test_login_command_names_what_went_wrong(e2e: Harness) -> None:
    bad_user = run_login("BBUser30000", "--connector", e2e.stack.connector_url)
    assert bad_user.returncode == 2
    assert "is not a sandbox user" in bad_user.stderr

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        nobody = f"https://localhost:{sock.getsockname()[1]}"
    unreachable = run_login("BBUser00042", "--connector", nobody)
    assert unreachable.returncode == 1
    assert f"login: cannot reach {nobody}" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
