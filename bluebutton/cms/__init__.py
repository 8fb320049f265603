"""Blue Button, the upstream: its HTTP client, paging, search-page parsing, OAuth and the pending
authorizations (state + PKCE verifier) between `/authorize` and the callback."""
