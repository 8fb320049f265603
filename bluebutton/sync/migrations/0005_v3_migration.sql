-- Blue Button v3 beside v2 (bb2-v3.md §3.3, §3.4, §8): a kept v2 grant moves to v3 when the
-- beneficiary consents there (their v2 tokens are deleted by CMS anyway, §2.5).
ALTER TABLE bluebutton_grants DROP CONSTRAINT bluebutton_grants_state_check;
ALTER TABLE bluebutton_grants ADD CONSTRAINT bluebutton_grants_state_check
    CHECK (state IN ('active', 'failing', 'expired', 'revoked', 'disconnected', 'migrated'));
-- HMAC of the beneficiary's MBI (Coverage.subscriberId): the same person on both versions,
-- never matched by patient id (ids differ between versions); NULL until a run has read it.
ALTER TABLE bluebutton_grants ADD COLUMN beneficiary_key bytea;
ALTER TABLE bluebutton_grants ADD COLUMN migrated_from uuid REFERENCES bluebutton_grants (id);
CREATE INDEX bluebutton_grants_beneficiary ON bluebutton_grants (beneficiary_key)
    WHERE beneficiary_key IS NOT NULL;

-- Per grant: the HMAC of each stored claim's cross-version key and the claim's id in its version.
-- Written with the ledger (stored or proven unchanged), so a v3 run can prove a claim is held.
CREATE TABLE bluebutton_claim_keys (
    grant_id uuid NOT NULL REFERENCES bluebutton_grants (id),
    claim_key bytea NOT NULL,
    resource_id text NOT NULL,
    PRIMARY KEY (grant_id, claim_key)
);
