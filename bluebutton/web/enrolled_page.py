"""The HTML page after authorizing with sync=true: the data will be kept current; no refresh token."""

from __future__ import annotations

import uuid
from html import escape

from bluebutton.cms.oauth import TokenSet

CSS = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
code{font-family:ui-monospace,monospace}
dt{font-weight:600;margin-top:.6rem}
"""


def enrolled_page(tokens: TokenSet, grant_id: uuid.UUID) -> tuple[str, dict[str, str]]:
    scopes = "".join(f"<li><code>{escape(s)}</code></li>" for s in tokens.scope)
    link = f"/bluebutton/grants/{grant_id}"
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blue Button: data kept current</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body>
<h1>Blue Button access granted</h1>
<p id="kept-current">This service now keeps the beneficiary's Medicare data current in
LinuxForHealth connect: a first full copy is being stored now, and new or changed claims are added
as CMS publishes them, until the grant ends
({escape(tokens.access_grant_expiration or "no end date")}) or is disconnected.</p>
<dl>
<dt>Grant id</dt><dd><code id="grant-id">{grant_id}</code>
 (operators: <a id="grant-link" href="{link}"><code>GET {link}</code></a> with the X-API-Key)</dd>
<dt>Patient</dt><dd><code id="patient">{escape(tokens.patient or "(not given)")}</code></dd>
<dt>Granted scopes</dt><dd><ul id="scopes">{scopes}</ul></dd>
</dl>
</body></html>
"""
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers
