-- The event outbox (bluebutton/events): one row per event, written in the transaction of the
-- change that causes it, and one delivery row per target (NATS, each webhook URL).
-- Bodies hold ids, states and counts only: never a token, never FHIR content.

CREATE TABLE bluebutton_events (
    id uuid PRIMARY KEY,
    type text NOT NULL,
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    run_id bigint,
    occurred_at timestamptz NOT NULL,
    body jsonb NOT NULL,
    -- events that must happen once per cause (grant.expiring at 30 and at 7 days) carry a key
    dedupe_key text UNIQUE,
    dispatched_at timestamptz
);
CREATE INDEX bluebutton_events_grant ON bluebutton_events (grant_id, occurred_at);

CREATE TABLE bluebutton_event_deliveries (
    event_id uuid NOT NULL REFERENCES bluebutton_events (id),
    -- 'nats' or 'webhook:<first 16 hex digits of the URL's SHA-256>' (no URL: it may hold a secret)
    target text NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    delivered_at timestamptz,
    PRIMARY KEY (event_id, target)
);
