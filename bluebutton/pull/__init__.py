"""The one-shot pull behind `GET /bluebutton/fhir`: the query, the transfer (fetch, validate,
forward), its progress, and the Idempotency-Key with its store."""
