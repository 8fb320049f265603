"""Outbound HTTP, by concern: `tls` (trust built once), `client` (the shared httpx client and the
base class owning it), `retry` (clocks, `Retry-After`, backoff), `responses` (releasing them,
reading error bodies), `logs` (no query string in httpx's log records)."""
