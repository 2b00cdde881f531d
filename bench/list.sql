-- What GET /api/v2/patients?limit=50 sends (pgbench -M prepared): BEGIN, then
-- the clinic and user settings with the session check, in one round trip; the page and its audit event (the ids shown, as a uuid[])
-- in one statement, and COMMIT.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
WITH page AS MATERIALIZED (SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at FROM patients WHERE archived_at IS NULL  ORDER BY lower(last_name), lower(first_name), id LIMIT 51), audit AS (INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, ids) SELECT :clinic::uuid, gen_random_uuid(), :user::uuid, 'patient.list', 'patient', NULL, NULL, 'pgbench', '127.0.0.1'::inet, 'success', ARRAY(SELECT id FROM page LIMIT 50) FROM (SELECT 1) AS one) SELECT * FROM page;
COMMIT;
