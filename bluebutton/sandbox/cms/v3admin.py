"""Admin endpoints for the emulated v3 (not part of CMS): CMS's per-app switches and record merges.

    GET   /_sandbox/v3          {"early_adopter": true, "part_d_only": false, "all_users": false}
    PUT   /_sandbox/v3          change any of them (omitted fields keep their value); 400 if invalid
    POST  /_sandbox/v3/merge    {"user": "BBUser09002"} -> {"old": "-3025...", "new": "-3026..."}

`early_adopter` is the app's `v3_early_adopter` flag (off: v3 authorize and refresh answer 403),
`part_d_only` its `part_d_eob_only` (bb2-v3.md §1, §5); `all_users` lets every synthetic user sign
in on v3 (the benchmark), where CMS's sandbox admits the pilot users BBUser09001-09005 only.
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.admin import resolve_user
from bluebutton.sandbox.cms.v3data import V3State


class V3Switches(BaseModel):
    model_config = ConfigDict(extra="forbid")

    early_adopter: bool | None = None
    part_d_only: bool | None = None
    all_users: bool | None = None


class V3Admin:
    def __init__(self, state: V3State) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_sandbox/v3", self.switches, methods=["GET", "PUT"]),
            Route("/_sandbox/v3/merge", self.merge, methods=["POST"]),
        ]

    async def switches(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                change = V3Switches.model_validate(orjson.loads(await request.body() or b"{}"))
            except (ValidationError, orjson.JSONDecodeError) as e:
                return JSONResponse({"detail": str(e)}, status_code=400)
            for name, value in change.model_dump(exclude_none=True).items():
                setattr(self.state, name, value)
        state = self.state
        return JSONResponse(
            {
                "early_adopter": state.early_adopter,
                "part_d_only": state.part_d_only,
                "all_users": state.all_users,
            }
        )

    async def merge(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        user = resolve_user(body.get("user") if isinstance(body, dict) else None)
        if user is None:
            return JSONResponse(
                {"detail": 'give {"user": login name, number or patient id}'}, status_code=400
            )
        old, new = self.state.merge(user)
        return JSONResponse({"old": old, "new": new})
