-- The page's transaction with nothing in it (pgbench -M prepared): BEGIN, the clinic and
-- user settings with the session check in one pipeline, as bench/list.sql sends them, and
-- COMMIT. What every request's transaction costs PostgreSQL before its own statement.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
COMMIT;
