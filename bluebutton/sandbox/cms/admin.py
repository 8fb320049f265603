"""Admin endpoints of the CMS emulator, for tests, the demo and the benchmark (not part of CMS).

    GET   /_sandbox/faults          the live fault switchboard (`faults.Faults`) as JSON
    PUT   /_sandbox/faults          replace it (omitted fields get their defaults); 400 if invalid
    PATCH /_sandbox/faults          change only the given fields
    POST  /_sandbox/expire_token    {"user": "BBUser00042"} -> the user's access tokens expire now
    POST  /_sandbox/expire_grant    {"user": ...} -> the 13-month grant ends now (refresh -> 401)
    POST  /_sandbox/add_claims      {"user": ..., "count": 3} -> 3 new claims, lastUpdated now
    POST  /_sandbox/change_claim    {"user": ..., "id": optional} -> one claim gets new content
    POST  /_sandbox/revoke          {"user": ...} -> the beneficiary disconnects the app (tokens die)
    POST  /_sandbox/reset           forget all tokens, pending logins and counts, faults back to the config
    GET   /_sandbox/users/<name>    login, password, patient id, claim count, invalid claim ids
    GET   /_sandbox/clock           the emulated time, its offset, weeks of scheduled claims arrived
    POST  /_sandbox/clock           {"advance_seconds": 604800} -> time moves on (tokens age, grants
                                    end, that week's scheduled claims arrive; schedule.py)
    GET|PUT /_sandbox/v3           CMS's v3 switches for the app (early adopter, Part-D-only, all
                                    users rather than the pilot ones); `v3admin.py`
    POST  /_sandbox/v3/merge        {"user": ...} -> CMS merges the beneficiary's v3 record
    GET|PUT /_sandbox/rate_limit    the per-token throttle (`ratelimit.py`)
    PUT   /_sandbox/token_lifetime  {"seconds": 120} -> access tokens issued from now live that long
    GET   /_sandbox/stats           token endpoint calls by grant type (e.g. refresh_token: 1)

CMS's own sandbox helper, `POST /v2/o/expire_authenticated_user/<patient>/` (client credentials),
is in `oauth.py`.

`user` may be a login name, a user number or a patient id (`"patient"` works too). No
authentication: the emulator only ever listens on loopback or a private compose network.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.clock import EmulatedClock
from bluebutton.sandbox.cms.data import (
    USER_COUNT,
    CmsDataset,
    parse_username,
    password,
    patient_id,
    user_for_patient_id,
    username,
)
from bluebutton.sandbox.cms.faults import Faults, FaultState
from bluebutton.sandbox.cms.tokens import TokenStore


def resolve_user(value: Any) -> int | None:
    """A user number from a login name, a number or a patient id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < USER_COUNT else None
    if isinstance(value, str):
        found = parse_username(value)
        return found if found is not None else user_for_patient_id(value)
    return None


class AdminApi:
    def __init__(
        self,
        tokens: TokenStore,
        dataset: CmsDataset,
        faults: FaultState,
        initial_faults: Faults,
        clock: EmulatedClock,
    ) -> None:
        self.tokens = tokens
        self.clock = clock
        self.initial_token_seconds = tokens.access_token_seconds
        self.dataset = dataset
        self.faults = faults
        self.initial_faults = initial_faults
        self.on_reset: list[Callable[[], None]] = []  # other parts' state (v3, the throttle)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_sandbox/faults", self.faults_endpoint, methods=["GET", "PUT", "PATCH"]),
            Route("/_sandbox/expire_token", self.expire_token, methods=["POST"]),
            Route("/_sandbox/expire_grant", self.expire_grant, methods=["POST"]),
            Route("/_sandbox/add_claims", self.add_claims, methods=["POST"]),
            Route("/_sandbox/change_claim", self.change_claim, methods=["POST"]),
            Route("/_sandbox/revoke", self.revoke, methods=["POST"]),
            Route("/_sandbox/reset", self.reset, methods=["POST"]),
            Route("/_sandbox/users/{name}", self.user, methods=["GET"]),
            Route("/_sandbox/clock", self.clock_endpoint, methods=["GET", "POST"]),
            Route("/_sandbox/token_lifetime", self.token_lifetime, methods=["PUT"]),
            Route("/_sandbox/stats", self.stats, methods=["GET"]),
        ]

    async def faults_endpoint(self, request: Request) -> Response:
        if request.method != "GET":
            try:
                body = orjson.loads(await request.body())
                if not isinstance(body, dict):
                    raise TypeError("a JSON object is required")
                if request.method == "PATCH":
                    body = self.faults.faults.model_dump() | body
                self.faults.faults = Faults.model_validate(body)
            except (orjson.JSONDecodeError, TypeError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
            except ValidationError as exc:
                return JSONResponse({"detail": orjson.loads(exc.json(include_url=False))}, status_code=400)
        return JSONResponse(self.faults.faults.model_dump())

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        return body if isinstance(body, dict) else {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.tokens.clock(), UTC)

    async def add_claims(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        count = (await self._body(request)).get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
            return JSONResponse({"detail": "count must be an integer 1..1000"}, status_code=400)
        return JSONResponse({"added": self.dataset.add_claims(user, count, self._now())})

    async def change_claim(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        eob_id = (await self._body(request)).get("id")
        changed = self.dataset.change_claim(user, eob_id if isinstance(eob_id, str) else None, self._now())
        if changed is None:
            return JSONResponse({"detail": "no such claim"}, status_code=404)
        return JSONResponse({"changed": changed})

    async def revoke(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        return JSONResponse({"revoked": self.tokens.revoke_user(user)})

    async def _user(self, request: Request) -> int | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        value = body.get("user", body.get("patient")) if isinstance(body, dict) else None
        user = resolve_user(value)
        if user is None:
            return JSONResponse({"detail": 'give {"user": "BBUser00042"} (or a patient id)'}, status_code=400)
        return user

    async def expire_token(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        return JSONResponse({"expired": self.tokens.expire_access_tokens(user)})

    async def expire_grant(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        return JSONResponse({"expired": self.tokens.expire_grants(user)})

    async def clock_endpoint(self, request: Request) -> Response:
        if request.method == "POST":
            seconds = (await self._body(request)).get("advance_seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 10**9:
                return JSONResponse(
                    {"detail": 'give {"advance_seconds": N}, N from 0 to 1e9 (the clock only moves forward)'},
                    status_code=400,
                )
            self.clock.advance(float(seconds))
        schedule = self.dataset.schedule
        return JSONResponse(
            {
                "now": self._now().isoformat(),
                "offset_seconds": self.clock.offset,
                "weeks": schedule.weeks(self.clock()) if schedule is not None else 0,
            }
        )

    async def token_lifetime(self, request: Request) -> Response:
        seconds = (await self._body(request)).get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 10**8:
            return JSONResponse({"detail": 'give {"seconds": N}, an integer 1..1e8'}, status_code=400)
        self.tokens.access_token_seconds = seconds
        return JSONResponse({"access_token_seconds": seconds})

    async def stats(self, request: Request) -> Response:
        return JSONResponse({"token_calls": dict(self.tokens.token_calls)})

    async def reset(self, request: Request) -> Response:
        self.tokens.reset()
        self.tokens.access_token_seconds = self.initial_token_seconds
        self.faults.faults = self.initial_faults.model_copy()
        for reset in self.on_reset:
            reset()
        return JSONResponse({"reset": True})

    async def user(self, request: Request) -> Response:
        user = resolve_user(request.path_params["name"])
        if user is None:
            return JSONResponse({"detail": "Not found."}, status_code=404)
        return JSONResponse(
            {
                "username": username(user),
                "password": password(user),
                "patient": patient_id(user),
                "claims": self.dataset.claim_count(user),
                "invalid_claims": self.dataset.invalid_claim_ids(user),
            }
        )
