"""The HTML error page a browser gets on the authorization routes, instead of raw JSON.

A browser lands on `/bluebutton/authorize_callback` straight from CMS: reloading the token page
(the state is single-use), pressing Deny, or a failed code exchange. Such a person needs the reason
and a link to start again, not an `OperationOutcome`; API clients (no `text/html` in `Accept`) keep
getting the JSON. Served with the callback page's headers: no caching, no referrer (the URL holds
the code), a nonce-only CSP, no framing.
"""

from __future__ import annotations

import secrets
from html import escape

from bluebutton.errors import Issue

BROWSER_PATHS = frozenset({"/bluebutton/authorize", "/bluebutton/authorize_callback"})
START_AGAIN = "/bluebutton/authorize"

CSS = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
code{font-family:ui-monospace,monospace}
.error{background:#fdecea;border-left:4px solid #d93025;padding:.6rem 1rem}
a.button{display:inline-block;font-size:1rem;padding:.4rem 1rem;margin-top:.6rem;background:#1a5fb4;
color:#fff;text-decoration:none;border-radius:4px}
"""


def wants_html(accept: str) -> bool:
    """Whether the client asked for HTML (browsers do on navigation; Swagger and curl do not)."""
    return "text/html" in accept.split(";", 1)[0] or accept.startswith("text/html")


def error_page(issues: list[Issue], status: int) -> tuple[str, dict[str, str]]:
    """The page and the security headers it must be sent with."""
    nonce = secrets.token_urlsafe(16)
    reasons = "".join(
        f'<li class="{"error" if i.severity in ("error", "fatal") else "info"}">{escape(i.diagnostics)}</li>'
        for i in issues
    )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blue Button authorization failed</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">{CSS}</style></head>
<body>
<h1>Blue Button authorization did not complete</h1>
<ul id="reasons">{reasons}</ul>
<p>Nothing was stored. An authorization link works once: to try again, start a new one.</p>
<p><a id="start-again" class="button" href="{START_AGAIN}">Start again</a></p>
<p>Or open the <a id="docs-link" href="/docs">API docs (Swagger UI)</a>. (HTTP {status})</p>
</body></html>
"""
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers
