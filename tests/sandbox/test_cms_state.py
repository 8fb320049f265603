"""The CMS emulator's state file (`state.py`): a restarted emulator (a new app on the same file)
honours the tokens, grant, clock and added claims of the one before; without a path nothing is
written; a bad file is refused with a clear error; the file is private and replaced whole."""

from __future__ import annotations

import dataclasses
import stat
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from bluebutton.sandbox.cms.cli import build_parser, config_from_args
from bluebutton.sandbox.cms.data import claim_count
from bluebutton.sandbox.cms.schedule import WEEK_SECONDS
from bluebutton.sandbox.cms.state import FORMAT, StateFile, StateFileError, StateMiddleware, from_json
from tests.sandbox.test_cms_emulator import FakeClock, open_cms

USER = 2  # BBUser00002: 7 claims


async def test_a_restarted_emulator_keeps_tokens_grant_clock_and_claims(tmp_path: Path) -> None:
    path = tmp_path / "cms-state.json"
    clock = FakeClock()
    async with open_cms(clock, state_path=path) as cms:
        tokens = await cms.login(USER)
        added = (await cms.client.post("/_sandbox/add_claims", json={"user": USER, "count": 2})).json()[
            "added"
        ]
        changed = (await cms.client.post("/_sandbox/change_claim", json={"user": USER})).json()["changed"]
        await cms.client.put("/_sandbox/token_lifetime", json={"seconds": 120})
        await cms.client.post("/_sandbox/clock", json={"advance_seconds": WEEK_SECONDS + 60})
        before = (await cms.client.get("/_sandbox/users/BBUser00002")).json()["claims"]
        assert before > claim_count(USER) + 2  # the week's batch arrived too
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    clock.advance(30)  # real time passes while it is down
    async with open_cms(clock, state_path=path) as cms:
        moved = (await cms.client.get("/_sandbox/clock")).json()
        assert (moved["offset_seconds"], moved["weeks"]) == (WEEK_SECONDS + 60, 1)
        assert (await cms.client.get("/_sandbox/users/BBUser00002")).json()["claims"] == before
        # The access token aged past its hour on the moved clock; the refresh token still works once.
        assert (await cms.fhir("Coverage", tokens["access_token"])).status_code == 401
        refreshed = await cms.refresh(tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["expires_in"] == 120  # the lifetime set at run time
        fresh = refreshed.json()
        bundle = (
            await cms.fhir("ExplanationOfBenefit", fresh["access_token"], params={"_count": "50"})
        ).json()
        ids = {e["resource"]["id"] for e in bundle["entry"]}
        assert set(added) | {changed} <= ids
        assert len(ids) == before

    async with open_cms(clock, state_path=path) as cms:  # the rotation was kept too
        assert (await cms.refresh(tokens["refresh_token"])).status_code == 400
        assert (await cms.refresh(fresh["refresh_token"])).status_code == 200
        # A revoked grant stays revoked.
        await cms.client.post("/_sandbox/revoke", json={"user": USER})
    async with open_cms(clock, state_path=path) as cms:
        assert (await cms.fhir("Coverage", fresh["access_token"])).status_code == 401


async def test_without_a_state_path_nothing_is_written_or_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    async with open_cms(clock) as cms:
        tokens = await cms.login(USER)
    async with open_cms(clock) as cms:
        assert (await cms.refresh(tokens["refresh_token"])).status_code == 400
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - a check after the app is closed


def test_the_cli_takes_a_state_path_from_a_flag_or_the_environment(tmp_path: Path) -> None:
    parser = build_parser({})
    assert config_from_args(parser.parse_args([]), {}).state_path is None
    flag = config_from_args(parser.parse_args(["--state", str(tmp_path / "s.json")]), {})
    assert flag.state_path == tmp_path / "s.json"
    environ = {"BLUEBUTTON_SANDBOX_CMS_STATE": str(tmp_path / "e.json")}
    assert config_from_args(build_parser(environ).parse_args([]), environ).state_path == tmp_path / "e.json"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b"[]", "not a JSON object", id="a-list"),
        pytest.param(orjson.dumps({"format": FORMAT + 1}), f"expected {FORMAT}", id="another-format"),
        pytest.param(orjson.dumps({"format": FORMAT, "tokens": {}}), "unexpected content", id="truncated"),
    ],
)
async def test_a_bad_state_file_is_refused_saying_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "cms-state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=message):
        async with open_cms(state_path=path):
            pass


def test_the_cli_names_a_bad_state_file_and_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bluebutton.sandbox.cms.cli import main

    path = tmp_path / "cms-state.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-tls", "--state", str(path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"cms sandbox: state file {path}: not JSON")
    assert error.rstrip().endswith("delete it to start afresh")


def test_a_save_replaces_the_file_whole_and_skips_an_unchanged_state(tmp_path: Path) -> None:
    path = tmp_path / "cms-state.json"
    state_file = StateFile(path)
    assert state_file.load() is None
    state_file.save(b'{"a": 1}')
    first = path.stat()
    state_file.save(b'{"a": 1}')  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == first.st_mtime_ns and path.stat().st_ino == first.st_ino
    state_file.save(b'{"a": 2}')
    assert path.stat().st_ino != first.st_ino  # a new file renamed over the old one
    assert path.read_bytes() == b'{"a": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["cms-state.json"]  # no temporary left


@dataclass(frozen=True)
class _Inner:
    flag: bool = False


@dataclass
class _Outer:
    name: str
    scopes: tuple[str, ...]
    inner: _Inner = field(default_factory=_Inner)
    note: str | None = None


def test_records_come_back_with_tuples_and_nested_records() -> None:
    record = _Outer("a", ("x", "y"), _Inner(flag=True))
    again = from_json(_Outer, orjson.loads(orjson.dumps(dataclasses.asdict(record))))
    assert again == record and isinstance(again.inner, _Inner)
    assert from_json(_Outer, {"name": "b", "scopes": []}) == _Outer("b", ())  # a field added later


@pytest.mark.parametrize(
    ("method", "path", "saves"),
    [
        pytest.param("GET", "/v2/fhir/ExplanationOfBenefit/", 0, id="a-fhir-read"),
        pytest.param("POST", "/v2/o/token/", 2, id="the-token-endpoint"),
        pytest.param("GET", "/v2/o/authorize/", 2, id="an-authorization-starts"),
        pytest.param("POST", "/_sandbox/clock", 2, id="an-admin-call"),
    ],
)
async def test_the_state_is_saved_before_the_response_except_after_fhir_reads(
    method: str, path: str, saves: int
) -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        events.append(message["type"])

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    middleware = StateMiddleware(app, lambda: events.append("saved"))
    await middleware({"type": "http", "method": method, "path": path}, receive, send)
    expected = ["saved", "http.response.start", "http.response.body", "saved"]
    assert events == (expected if saves else ["http.response.start", "http.response.body"])
