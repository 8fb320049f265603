"""Rendering the console's Jinja2 templates, with the headers every console page is sent with.

Each page gets a fresh nonce; its CSP allows the nonce-tagged stylesheet and nothing else (no
script at all: the console works with links and forms), forms only to this origin, and no framing.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

WARN_DAYS = 30  # CMS's data-access grant lasts 13 months; warn a month before it lapses

_templates = Environment(
    loader=PackageLoader("bluebutton.web.console", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def instant(value: str | None) -> str:
    """An ISO 8601 instant from the service's JSON as operators read it, in UTC to the second."""
    if not value:
        return "—"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_templates.filters["instant"] = instant


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "same-origin",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def render(template: str, **context: Any) -> tuple[str, dict[str, str]]:
    """The page and its headers."""
    nonce = secrets.token_urlsafe(16)
    html = _templates.get_template(template).render(nonce=nonce, **context)
    return html, security_headers(nonce)


def days_left(expiration: str | None, now: datetime) -> int | None:
    """Whole days until the data-access grant ends (negative once past); None without an end."""
    if not expiration:
        return None
    return (datetime.fromisoformat(expiration) - now).days


def totals(run: dict[str, Any] | None) -> dict[str, int]:
    """A run's counts summed over resource types (fetched, new, changed, unchanged, invalid)."""
    summed: dict[str, int] = {}
    for counts in ((run or {}).get("resources") or {}).values():
        for name, value in counts.items():
            summed[name] = summed.get(name, 0) + int(value)
    return summed


def in_progress(*runs: dict[str, Any] | None) -> bool:
    """Whether a page shows a run that has not ended (it then reloads itself every few seconds)."""
    return any(run is not None and run["status"] in ("queued", "running") for run in runs)
