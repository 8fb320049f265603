"""The operator console: sign in with the admin key, then list grants, open a grant or a run,
sync now, disconnect. Server-rendered pages; every state change is a POST carrying a CSRF token.

Reads go through the sync service and its modules (`grants_json`, `runs`, `ledger`), so the
console and the JSON operator API show the same data from the same queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bluebutton.errors import NotConfiguredError
from bluebutton.settings import Settings
from bluebutton.sync import ledger, runs
from bluebutton.sync.errors import RunNotFoundError
from bluebutton.sync.grants import SYNCING
from bluebutton.sync.service import SYNC_SETTINGS, SyncService, sync_off
from bluebutton.web.console.errors import ConsoleSignInError, CsrfTokenError
from bluebutton.web.console.pages import WARN_DAYS, days_left, in_progress, render, totals
from bluebutton.web.console.session import SESSION_SECONDS, SIGN_IN_SECONDS, Session, SessionSigner, same_key
from bluebutton.web.deps import SettingsDep, SyncDep

logger = logging.getLogger(__name__)

HOME = "/bluebutton/console"
SESSION_COOKIE = "bluebutton_console"
SIGN_IN_COOKIE = "bluebutton_console_sign_in"
WRONG_KEY_DELAY = 1.0  # seconds before a refused sign-in answers: slows guessing, not operators
LIST_LIMIT = 1000
RUNS_SHOWN = 20

router = APIRouter(include_in_schema=False)


def get_clock() -> Callable[[], float]:
    """Wall-clock seconds; tests override it to reach a session's expiry."""
    return time.time


def get_pause() -> Callable[[float], Awaitable[None]]:
    """How a refused sign-in waits; tests override it so they do not."""
    return asyncio.sleep


@dataclass
class Console:
    """What a console request works with: settings, the sync service (None: grant keeping off),
    the signer (None: no admin key) and the moment of the request."""

    request: Request
    settings: Settings
    service: SyncService | None
    signer: SessionSigner | None
    now: float

    def session(self) -> Session | None:
        if self.signer is None:
            return None
        return self.signer.verify("session", self.request.cookies.get(SESSION_COOKIE), self.now)

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html, headers = render(template, **{"home": HOME, "refresh": False, "signed_in": False, **context})
        return HTMLResponse(html, status_code=status, headers=headers)

    def off_page(self) -> HTMLResponse | None:
        """The page saying what to configure, or None when the console can work."""
        if self.signer is None:
            return self.page("not_configured.html", 503, missing="BLUEBUTTON_ADMIN_API_KEY")
        if self.service is None:
            return self.page("not_configured.html", 503, missing=SYNC_SETTINGS)
        return None

    def sign_in_form(self, status: int = 200, error: str | None = None) -> HTMLResponse:
        assert self.signer is not None
        value, pre = self.signer.issue("sign-in", self.now, SIGN_IN_SECONDS)
        response = self.page("sign_in.html", status, csrf=self.signer.csrf_token(pre), error=error)
        _set_cookie(response, SIGN_IN_COOKIE, value, SIGN_IN_SECONDS)
        return response


def console(
    request: Request,
    settings: SettingsDep,
    service: SyncDep,
    clock: Annotated[Callable[[], float], Depends(get_clock)],
) -> Console:
    key = settings.admin_api_key
    signer = SessionSigner(key.get_secret_value()) if key is not None else None
    return Console(request, settings, service, signer, clock())


ConsoleDep = Annotated[Console, Depends(console)]


@dataclass
class Operator:
    """A signed-in request: the service and the CSRF token its forms carry."""

    service: SyncService
    csrf: str
    now: datetime


def _operator(console: Console, session: Session) -> Operator:
    assert console.service is not None and console.signer is not None
    return Operator(
        console.service, console.signer.csrf_token(session), datetime.fromtimestamp(console.now, UTC)
    )


async def posted(console: ConsoleDep) -> Operator:
    """A form post from a signed-in console page, or a refusal naming what is missing."""
    if console.signer is None:
        raise NotConfiguredError("The console is off: set BLUEBUTTON_ADMIN_API_KEY (at least 32 characters).")
    if console.service is None:
        raise sync_off()
    session = console.session()
    if session is None:
        raise ConsoleSignInError(f"Not signed in to the console, or the session ended: sign in at {HOME}.")
    token = (await console.request.form()).get("csrf")
    if not console.signer.csrf_ok(session, token if isinstance(token, str) else None):
        raise CsrfTokenError(
            f"This form post has no valid CSRF token, so it was not sent by a console page: "
            f"reload {HOME} and use its buttons."
        )
    return _operator(console, session)


PostedDep = Annotated[Operator, Depends(posted)]


def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=HOME, secure=True, httponly=True, samesite="strict"
    )


def _see(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


def _signed_in(console: Console) -> Operator | None:
    session = console.session()
    if session is None or console.service is None:
        return None
    return _operator(console, session)


@router.get(HOME)
async def home(console: ConsoleDep) -> Response:
    if (off := console.off_page()) is not None:
        return off
    operator = _signed_in(console)
    if operator is None:
        return console.sign_in_form()
    listed = await operator.service.grants_json(None, LIST_LIMIT)
    for grant in listed:
        grant["days_left"] = days_left(grant["access_grant_expiration"], operator.now)
        grant["totals"] = totals(grant["last_run"])
    return console.page(
        "grants.html",
        grants=listed,
        csrf=operator.csrf,
        signed_in=True,
        warn_days=WARN_DAYS,
        syncing=SYNCING,
        refresh=in_progress(*(g["last_run"] for g in listed)),
    )


@router.post(f"{HOME}/sign-in")
async def sign_in(
    console: ConsoleDep, pause: Annotated[Callable[[float], Awaitable[None]], Depends(get_pause)]
) -> Response:
    if (off := console.off_page()) is not None:
        return off
    assert console.signer is not None and console.settings.admin_api_key is not None
    form = await console.request.form()
    pre = console.signer.verify("sign-in", console.request.cookies.get(SIGN_IN_COOKIE), console.now)
    token = form.get("csrf")
    if pre is None or not console.signer.csrf_ok(pre, token if isinstance(token, str) else None):
        return console.sign_in_form(
            403, "This sign-in form expired or was not sent by this console: sign in again."
        )
    key = form.get("key")
    if not isinstance(key, str) or not same_key(key, console.settings.admin_api_key.get_secret_value()):
        logger.warning("console sign-in refused: wrong admin key")
        await pause(WRONG_KEY_DELAY)
        return console.sign_in_form(401, "That is not the admin key (BLUEBUTTON_ADMIN_API_KEY). Try again.")
    value, _ = console.signer.issue("session", console.now, SESSION_SECONDS)
    response = _see(HOME)
    _set_cookie(response, SESSION_COOKIE, value, SESSION_SECONDS)
    response.delete_cookie(SIGN_IN_COOKIE, path=HOME, secure=True, httponly=True, samesite="strict")
    logger.info("console sign-in")
    return response


@router.post(f"{HOME}/sign-out")
async def sign_out(operator: PostedDep) -> Response:
    response = _see(HOME)
    response.delete_cookie(SESSION_COOKIE, path=HOME, secure=True, httponly=True, samesite="strict")
    return response


@router.get(f"{HOME}/grants/{{grant_id}}")
async def grant_page(grant_id: uuid.UUID, console: ConsoleDep, queued: int | None = None) -> Response:
    operator = _signed_in(console)
    if operator is None:
        return _see(HOME)
    grant = await operator.service.grant_json(grant_id)
    grant["days_left"] = days_left(grant["access_grant_expiration"], operator.now)
    grant_runs = [runs.as_json(r) for r in await runs.of_grant(operator.service.pool, grant_id, RUNS_SHOWN)]
    for run in grant_runs:
        run["totals"] = totals(run)
    return console.page(
        "grant.html",
        grant=grant,
        runs=grant_runs,
        records=await ledger.records(operator.service.pool, grant_id),
        csrf=operator.csrf,
        signed_in=True,
        warn_days=WARN_DAYS,
        syncing=SYNCING,
        queued=queued,
        refresh=in_progress(*grant_runs[:1]),
    )


@router.get(f"{HOME}/runs/{{run_id}}")
async def run_page(run_id: int, console: ConsoleDep) -> Response:
    operator = _signed_in(console)
    if operator is None:
        return _see(HOME)
    row = await runs.get(operator.service.pool, run_id)
    if row is None:
        raise RunNotFoundError(f"No run {run_id}. Open a grant at {HOME} to see its runs.")
    run = runs.as_json(row)
    return console.page(
        "run.html", run=run, totals=totals(run), csrf=operator.csrf, signed_in=True, refresh=in_progress(run)
    )


@router.post(f"{HOME}/grants/{{grant_id}}/sync")
async def sync_now(grant_id: uuid.UUID, operator: PostedDep) -> Response:
    run_id = await operator.service.sync_now(grant_id)
    logger.info("console: run %d requested for grant %s", run_id, grant_id)
    return _see(f"{HOME}/grants/{grant_id}?queued={run_id}")


@router.get(f"{HOME}/grants/{{grant_id}}/disconnect")
async def confirm_disconnect(grant_id: uuid.UUID, console: ConsoleDep) -> Response:
    operator = _signed_in(console)
    if operator is None:
        return _see(HOME)
    grant = await operator.service.grant_json(grant_id)
    return console.page("disconnect.html", grant=grant, csrf=operator.csrf, signed_in=True)


@router.post(f"{HOME}/grants/{{grant_id}}/disconnect")
async def disconnect(grant_id: uuid.UUID, operator: PostedDep) -> Response:
    await operator.service.disconnect(grant_id)
    logger.info("console: grant %s disconnected", grant_id)
    return _see(f"{HOME}/grants/{grant_id}")
