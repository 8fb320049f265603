"""The emulator's HTML: the Medicare login form, the consent form and error pages.

Plain HTML forms posting to the pending authorization's own URL (`/v2/o/authorize/<uuid>/`), no
JavaScript, no cookies: httpx following forms and a headless browser drive them the same way.
Element ids are stable for tests: `#username`, `#password`, `#login`; `#share-all`,
`#share-no-demographics`, `#allow`, `#deny`.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.5rem;color:#112e51}label{display:block;margin:.75rem 0 .25rem}
input[type=text],input[type=password]{width:100%;padding:.5rem;font-size:1rem}
button{margin:1rem .5rem 0 0;padding:.6rem 1.2rem;font-size:1rem}
.error{color:#b50909;border-left:4px solid #b50909;padding-left:.5rem}
.choice label{display:inline}.note{color:#5b616b;font-size:.9rem}
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def login_page(action: str, app_name: str, error: str | None = None) -> str:
    """Medicare.gov-style sign-in: `BBUser00042` / `PW00042!`."""
    message = f'<p class="error" id="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Medicare.gov - Sign in",
        f"""
<h1>Sign in to Medicare.gov (Blue Button 2.0 sandbox)</h1>
<p>{escape(app_name)} wants to access your Medicare claims data.</p>
{message}
<form method="post" action="{escape(action)}">
  <label for="username">Username</label>
  <input type="text" id="username" name="username" autocomplete="username" required>
  <label for="password">Password</label>
  <input type="password" id="password" name="password" autocomplete="current-password" required>
  <button type="submit" id="login" name="login" value="login">Log in</button>
</form>
<p class="note">Synthetic users: BBUser00000 .. BBUser29999, password PW + the five digits + !
(BBUser00042 / PW00042!).</p>""",
    )


def consent_page(action: str, app_name: str, username: str, scopes: tuple[str, ...]) -> str:
    """The Blue Button consent screen: share everything or withhold demographics, or deny."""
    scope_items = "".join(f"<li>{escape(s)}</li>" for s in scopes)
    return _page(
        "Blue Button 2.0 - Allow access",
        f"""
<h1>Allow {escape(app_name)} to access your Medicare data?</h1>
<p>Signed in as <strong id="signed-in-user">{escape(username)}</strong>.</p>
<form method="post" action="{escape(action)}">
  <fieldset class="choice"><legend>What do you want to share?</legend>
    <p><input type="radio" id="share-all" name="share_demographics" value="yes" checked>
    <label for="share-all">Share all of your data</label></p>
    <p><input type="radio" id="share-no-demographics" name="share_demographics" value="no">
    <label for="share-no-demographics">Share healthcare data, but not your personal info
    (name, address, date of birth, ...)</label></p>
  </fieldset>
  <details><summary>Requested permissions</summary><ul>{scope_items}</ul></details>
  <button type="submit" id="allow" name="allow" value="true">Allow</button>
  <button type="submit" id="deny" name="allow" value="false">Deny</button>
</form>""",
    )


def error_page(title: str, message: str) -> str:
    return _page(title, f'<h1>{escape(title)}</h1><p class="error" id="error">{escape(message)}</p>')


def consent_page_v3(
    action: str, app_name: str, username: str, scopes: tuple[str, ...], part_d_only: bool
) -> str:
    """The v3 consent screen (WS `authorize_v3.html`, bb2-v3.md §5): the "Alcohol & substance use
    information" box is unticked by default (`#share-samhsa`); a Part-D-only app shows drug claims
    as required instead."""
    scope_items = "".join(f"<li>{escape(s)}</li>" for s in scopes)
    if part_d_only:
        samhsa = '<p id="part-d-only">Prescription drug claims (required)</p>'
    else:
        samhsa = (
            '<p><input type="checkbox" id="share-samhsa" name="share_samhsa_data" value="True">'
            '<label for="share-samhsa">Alcohol &amp; substance use information</label></p>'
        )
    return _page(
        "Blue Button API v3 - Allow access",
        f"""
<h1>Allow {escape(app_name)} to access your Medicare data?</h1>
<p>Signed in as <strong id="signed-in-user">{escape(username)}</strong>.</p>
<form method="post" action="{escape(action)}">
  <input type="hidden" name="share_samhsa_data" value="False">
  <fieldset class="choice"><legend>What do you want to share?</legend>
    <p><input type="radio" id="share-all" name="share_demographics" value="yes" checked>
    <label for="share-all">Share all of your data</label></p>
    <p><input type="radio" id="share-no-demographics" name="share_demographics" value="no">
    <label for="share-no-demographics">Share healthcare data, but not your personal info</label></p>
    {samhsa}
  </fieldset>
  <details><summary>Requested permissions</summary><ul>{scope_items}</ul></details>
  <button type="submit" id="allow" name="allow" value="true">Allow</button>
  <button type="submit" id="deny" name="allow" value="false">Deny</button>
</form>""",
    )
