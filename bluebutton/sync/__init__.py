"""Grant keeping: stored Blue Button grants kept current in connect by background incremental runs.

database.py    the connection pool; the embedded PostgreSQL server (`embedded`)
migrations/    procrastinate's migrations and our versioned SQL files, tracked by name, and their runner
crypto.py      AES-256-GCM for tokens at rest (grant id as associated data), key rotation
grants.py      the grants table: enrolment, tokens, states, due grants
ledger.py      what connect holds per resource (content hash), quarantine, watermarks
runs.py        the runs table: queued → running → succeeded | partial | failed; a run and its job
runner.py      one run: refresh, pull since the watermark, validate, forward what is new
jobs.py        the blueprint tasks (`run_sync(run_id)`, the periodic sweep) and the process's App
keeping.py     a process's grant keeping: request_run, reconcile, sweep, the supervised worker
journal.py     writes kept while the database is away (rotated tokens, ledger rows, run ends)
service.py     what a process opens for grant keeping, and the operations the API calls
listing.py     the paged listings of grants, runs and records (one query a page, not a row)
keyset.py      the opaque keyset cursors of those pages

The shell commands (migrate, worker, rotate-keys) are `bluebutton/commands.py`.
"""
