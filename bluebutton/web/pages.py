"""One way to render HTML: every page is a Jinja2 template under `web/templates/`, rendered by
`render()`, which makes the page's nonce and sets its CSP and security headers.

The policy is the same for every page: nothing loads but what carries the nonce (the one
stylesheet, `templates/style.css`, inlined; the callback page's copy button), no framing, no
`<base>`. A page says only what differs: whether it runs its script, whether its forms post
(the console's do, to this origin), and its referrer policy (the authorization pages' URLs hold a
code, so they send no referrer at all).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

Referrer = Literal["no-referrer", "same-origin"]

_templates = Environment(
    loader=PackageLoader("bluebutton.web", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def instant(value: str | None) -> str:
    """An ISO 8601 instant as operators read it, in UTC to the second."""
    if not value:
        return "—"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def thousands(value: int) -> str:
    """12345 → "12,345": counts in tables read at a glance."""
    return f"{value:,}"


_templates.filters["instant"] = instant
_templates.filters["thousands"] = thousands


def security_headers(nonce: str, *, script: bool, forms: bool, referrer: Referrer) -> dict[str, str]:
    """The headers every page is sent with; `script` and `forms` open only what the page uses."""
    scripts = f"script-src 'nonce-{nonce}'; " if script else ""
    form_action = "'self'" if forms else "'none'"
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": referrer,
        "Content-Security-Policy": (
            f"default-src 'none'; {scripts}style-src 'nonce-{nonce}'; "
            f"form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def render(
    template: str,
    status: int = 200,
    *,
    script: bool = False,
    forms: bool = False,
    referrer: Referrer = "no-referrer",
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """The page with a fresh nonce and its headers (`headers` adds more, e.g. `WWW-Authenticate`)."""
    nonce = secrets.token_urlsafe(16)
    html = _templates.get_template(template).render(nonce=nonce, **context)
    page_headers = security_headers(nonce, script=script, forms=forms, referrer=referrer)
    return HTMLResponse(html, status_code=status, headers={**(headers or {}), **page_headers})
