-- Grants, the runs of each, what connect holds for each grant, quarantine and watermarks.
-- Tokens exist only as AES-256-GCM ciphertexts (bluebutton/sync/crypto.py), never in clear.

CREATE TABLE bluebutton_grants (
    id uuid PRIMARY KEY,
    patient text NOT NULL,
    api_version smallint NOT NULL,
    state text NOT NULL CHECK (state IN ('active', 'failing', 'expired', 'revoked', 'disconnected')),
    scopes text[] NOT NULL DEFAULT '{}',
    access_grant_expiration timestamptz,
    access_token_ct bytea,
    refresh_token_ct bytea,
    access_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    next_sync_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- one grant per beneficiary and CMS API version: re-authorizing replaces its tokens
    UNIQUE (patient, api_version)
);
CREATE INDEX bluebutton_grants_due ON bluebutton_grants (next_sync_at)
    WHERE state IN ('active', 'failing');

CREATE TABLE bluebutton_runs (
    id bigserial PRIMARY KEY,
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    job_id bigint,
    status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'partial', 'failed')),
    queued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    resources jsonb NOT NULL DEFAULT '{}',
    bundles jsonb NOT NULL DEFAULT '[]',
    issues jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX bluebutton_runs_grant ON bluebutton_runs (grant_id, id DESC);
-- a job waits under one queued run; the attempt that starts takes it
CREATE UNIQUE INDEX bluebutton_runs_queued_job ON bluebutton_runs (job_id) WHERE status = 'queued';

-- Where connect holds the latest version of each resource of a grant, and its content hash
-- (SHA-256 of the resource as CMS sent it, keys sorted, meta.lastUpdated left out).
CREATE TABLE bluebutton_ledger (
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    content_hash bytea NOT NULL,
    record_uuid text NOT NULL,
    data_record_location text NOT NULL,
    run_id bigint REFERENCES bluebutton_runs (id),
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grant_id, resource_type, resource_id)
);

-- Entries that failed validation, by content hash: not forwarded, not validated again until CMS
-- sends a different version.
CREATE TABLE bluebutton_quarantine (
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    resource_type text NOT NULL,
    resource_id text NOT NULL,
    content_hash bytea NOT NULL,
    issues jsonb NOT NULL,
    run_id bigint REFERENCES bluebutton_runs (id),
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grant_id, resource_type, resource_id)
);

-- Per grant and resource type: the search Bundle's meta.lastUpdated (CMS's clock) of the first
-- page of the last complete run; the next run asks for _lastUpdated=ge<it>.
CREATE TABLE bluebutton_watermarks (
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    resource_type text NOT NULL,
    last_updated text NOT NULL,
    PRIMARY KEY (grant_id, resource_type)
);
