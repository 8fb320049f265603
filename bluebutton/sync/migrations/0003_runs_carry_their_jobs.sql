-- A run is written first and its id is its job's argument (bluebutton/sync/jobs.py): a grant has
-- at most one open (queued or running) run, so any number of "sync now" presses make one run.
-- Runs left open by the earlier code (their jobs carried a grant id) are closed, their grants
-- made due at once, and their waiting jobs dropped: the sweep queues each grant again.

UPDATE bluebutton_grants SET next_sync_at = now()
    WHERE state IN ('active', 'failing')
    AND id IN (SELECT grant_id FROM bluebutton_runs WHERE status IN ('queued', 'running'));
UPDATE bluebutton_runs SET status = 'failed', finished_at = now(),
    issues = issues || '[{"severity": "error", "code": "incomplete", "diagnostics": "closed by the upgrade to runs that carry their own job; the grant is queued again"}]'::jsonb
    WHERE status IN ('queued', 'running');
DELETE FROM procrastinate_jobs WHERE task_name = 'bluebutton.sync_grant' AND status = 'todo';
-- the tasks now live on blueprints, namespaced by package
UPDATE procrastinate_jobs SET task_name = 'events:' || substr(task_name, 12)
    WHERE task_name IN ('bluebutton.dispatch_event', 'bluebutton.deliver_event') AND status = 'todo';

DROP INDEX bluebutton_runs_queued_job;
CREATE UNIQUE INDEX bluebutton_runs_open ON bluebutton_runs (grant_id) WHERE status IN ('queued', 'running');
CREATE INDEX bluebutton_runs_job ON bluebutton_runs (job_id);
-- 1 for a run asked for (sweep, operator, enrolment, recovery); n for the n-th try after
-- transient failures (BLUEBUTTON_SYNC_RETRY_ATTEMPTS)
ALTER TABLE bluebutton_runs ADD COLUMN attempt integer NOT NULL DEFAULT 1;

-- connect answered 200 with the record's uuid but without its location (a race in connect's
-- Kafka callback): the record is stored, where is unknown.
ALTER TABLE bluebutton_ledger ALTER COLUMN data_record_location DROP NOT NULL;
