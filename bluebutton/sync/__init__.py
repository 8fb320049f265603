"""Grant keeping: stored Blue Button grants kept current in connect by background incremental runs.

database.py    the connection pool; the embedded PostgreSQL server (`embedded`)
migrations/    procrastinate's schema plus our versioned SQL files, and their runner
crypto.py      AES-256-GCM for tokens at rest (grant id as associated data), key rotation
grants.py      the grants table: enrolment, tokens, states, due grants
ledger.py      what connect holds per resource (content hash), quarantine, watermarks
runs.py        the runs table: queued → running → succeeded | partial | failed
runner.py      one run: refresh, pull since the watermark, validate, forward what is new
jobs.py        the procrastinate app: `sync_grant`, the periodic sweep, stalled-job recovery
service.py     what a process opens for grant keeping, and `request_run`
routes.py      the operator API (X-API-Key)
cli.py         migrate, worker, keygen, rotate-keys
"""
