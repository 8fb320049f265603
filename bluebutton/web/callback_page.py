"""The HTML page a browser gets after authorizing: the token to paste into Swagger's Authorize.

The page is served with `Cache-Control: no-store` and `Referrer-Policy: no-referrer` (its URL
holds the authorization code), and a CSP that allows only its own nonce-tagged script.
"""

from __future__ import annotations

import secrets
from html import escape

from bluebutton.cms.oauth import TokenSet

CSS = """
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
code,textarea{font-family:ui-monospace,monospace}
textarea{width:100%;height:3.2rem;font-size:.95rem}
.warn{background:#fff4e5;border-left:4px solid #e8a33d;padding:.6rem 1rem}
dt{font-weight:600;margin-top:.6rem}
button{font-size:1rem;padding:.3rem .9rem;margin-top:.3rem}
"""


def callback_page(tokens: TokenSet) -> tuple[str, dict[str, str]]:
    """The page and the security headers it must be sent with."""
    nonce = secrets.token_urlsafe(16)
    scopes = "".join(f"<li><code>{escape(s)}</code></li>" for s in tokens.scope)
    warning = ""
    if tokens.demographics_declined:
        warning = (
            '<p class="warn" id="demographics-warning">The beneficiary chose not to share '
            "demographic data: the token has no <code>patient/Patient.read</code> or "
            "<code>profile</code> scope, so <code>resource_type=Patient</code> calls will be "
            "refused with 403. Coverage and ExplanationOfBenefit work.</p>"
        )
    refresh = ""
    if tokens.refresh_token:
        refresh = (
            "<details><summary>Refresh token (single-use; keep it secret)</summary>"
            f'<textarea id="refresh-token" readonly>{escape(tokens.refresh_token)}</textarea>'
            '<p>POST it as <code>{"refresh_token": "..."}</code> to '
            "<code>/bluebutton/refresh</code> for a new token set.</p></details>"
        )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Blue Button authorized</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">{CSS}</style></head>
<body>
<h1>Blue Button access granted</h1>
{warning}
<dl>
<dt>Patient</dt><dd><code id="patient">{escape(tokens.patient or "(not given)")}</code></dd>
<dt>Granted scopes</dt><dd><ul id="scopes">{scopes}</ul></dd>
<dt>Access token expires</dt><dd><code id="expires-at">{escape(tokens.expires_at)}</code>
 (in {tokens.expires_in // 60} minutes)</dd>
<dt>Access token</dt>
<dd><textarea id="access-token" readonly>{escape(tokens.access_token)}</textarea>
<button id="copy" type="button">Copy access token</button> <span id="copied"></span></dd>
</dl>
{refresh}
<h2>Next</h2>
<ol>
<li>Open the <a id="docs-link" href="/docs">API docs (Swagger UI)</a>.</li>
<li>Click <b>Authorize</b>, paste the access token, click <b>Authorize</b> and <b>Close</b>.</li>
<li>Run <code>GET /bluebutton/fhir</code> with <code>resource_type</code>
 ExplanationOfBenefit, Coverage or Patient.</li>
</ol>
<script nonce="{nonce}">
document.getElementById("copy").addEventListener("click", async () => {{
  const field = document.getElementById("access-token");
  field.select();
  try {{ await navigator.clipboard.writeText(field.value); }}
  catch (e) {{ document.execCommand("copy"); }}
  document.getElementById("copied").textContent = "Copied";
}});
</script>
</body></html>
"""
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    return html, headers
