"""`Allow` on a 405: every method the path answers.

Starlette answers 405 from the first route whose path matches and names that route's methods
only, so `PUT /bluebutton/grants/{id}` said `Allow: GET` although `DELETE` is served there too
(RFC 9110 §15.5.6: Allow lists the methods the target resource supports). Each method is tried
against the app's routes (`BaseRoute.matches`, which included routers answer too).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match, Mount

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str | None:
    """The methods some route serves at the request's path, or None if none does."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    allowed = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed) or None
