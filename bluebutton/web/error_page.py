"""The HTML error page a browser gets on the authorization routes, instead of raw JSON.

A browser lands on `/bluebutton/authorize_callback` straight from CMS: reloading the token page
(the state is single-use), pressing Deny, or a failed code exchange. Such a person needs the reason
and a link to start again, not an `OperationOutcome`; API clients (no `text/html` in `Accept`) keep
getting the JSON. Rendered like every page (`pages.render`): no caching, no referrer (the URL holds
the code), a nonce-only CSP, no framing.
"""

from __future__ import annotations

from fastapi.responses import HTMLResponse

from bluebutton.errors import Issue
from bluebutton.web.pages import render

BROWSER_PATHS = frozenset({"/bluebutton/authorize", "/bluebutton/authorize_callback"})
START_AGAIN = "/bluebutton/authorize"


def wants_html(accept: str) -> bool:
    """Whether the client asked for HTML (browsers do on navigation; Swagger and curl do not)."""
    return "text/html" in accept.split(";", 1)[0] or accept.startswith("text/html")


def error_page(issues: list[Issue], status: int, headers: dict[str, str] | None = None) -> HTMLResponse:
    """The page, with the error's own headers (e.g. `Retry-After`) kept."""
    return render(
        "error.html", status, headers=headers, issues=issues, http_status=status, start_again=START_AGAIN
    )
