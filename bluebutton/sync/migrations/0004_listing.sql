-- Paged listings (bluebutton/sync/listing.py): grants in enrolment order, all or by state, and a
-- patient search by prefix; each page is one index range scan, whatever its depth.
CREATE INDEX bluebutton_grants_listing ON bluebutton_grants (created_at, id);
CREATE INDEX bluebutton_grants_state_listing ON bluebutton_grants (state, created_at, id);
CREATE INDEX bluebutton_grants_patient_prefix ON bluebutton_grants (patient text_pattern_ops);
