"""An offline stand-in for the CMS Blue Button API, v2 and v3 side by side: OAuth 2.0 + FHIR R4.

Used by the one-command demo, the end-to-end tests (httpx and headless Chromium over real sockets)
and the benchmark. It is meant to be faithful, errors included (bb2-api.md): a permissive fake
would hide the connector bugs we need to catch. Run it with

    python -m bluebutton.sandbox.cms [--port 5300] [--no-tls] [--claims 150] [--faults '{...}']
                                     [--state cms-state.json]

Every option can also come from `BLUEBUTTON_SANDBOX_CMS_<OPTION>` (e.g. `..._PORT=5300`,
`..._REDIRECT_URI="https://a/cb,https://b/cb"`, `..._NO_TLS=1`); `--help` lists them.

Modules (one concern each; imports only point down this list's dependencies, never back to `app`):

    config.py       `CmsSandboxConfig` and its defaults (client, redirect URI, lifetimes)
    app.py          `create_cms_app`: the parts below wired into one Starlette app
    cli.py          the command line (`__main__.py` runs it)
    oauth.py        authorize/login/consent, token, revoke, userinfo, discovery
    tokens.py       pending authorizations, codes, grants, tokens
    scopes.py       granted scopes, demographics withheld, what a token may read
    pages.py        the HTML login and consent forms
    fhir.py         metadata, search and read: token, scope and own-patient checks
    search.py       query schema, filters, paging links, Bundle assembly
    faults.py       latency, 429, 5xx, dropped connections, hostile `next` links, failing pages
    admin.py        `/_sandbox/...`: faults at run time, expire tokens/grants, claims, clock, reset
    clock.py        the emulated clock (real time plus an offset admin calls move forward)
    schedule.py     the weekly batches of new claims over emulated time
    counts.py       `/_sandbox/requests`: data and token requests seen (the benchmark's CMS calls)
    state.py        `--state FILE`: tokens, grants, clock and added claims kept across restarts
    data.py         deterministic users, ids, claim lists and counts, the per-user cache
    beneficiary.py  Patient, Coverage and userinfo of a user
    claims.py       one ExplanationOfBenefit per claim type (valid R4 unless a defect is asked)
    codes.py        code systems and code tables
    ratelimit.py    the per-token throttle and its X-RateLimit-* headers (v2 and v3)
    v3data.py       v3 ids, the v3 form of each claim (same keys, other ids), v3 state (merges, flags)
    v3resources.py  v3 Patient, Coverage, userinfo and the digital insurance card
    v3oauth.py      `/v3/o/...`: v2's views with v3's rules (scope, pilot users, SAMHSA box, refresh)
    v3fhir.py       `/v3/fhir/...`: `_offset` paging, `_source`/`_tag`, SAMHSA, Part-D-only, merges
    v3admin.py      `/_sandbox/v3`: early adopter, Part-D-only, all users; record merges

Users, ids, claim counts and the deliberately invalid users are documented in `data.py`; the
admin endpoints in `admin.py`; fault semantics in `faults.py`. The package imports nothing on its
own: import the module you need (`bluebutton.sandbox.cms.app`, `.config`, ...).
"""
