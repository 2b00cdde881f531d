-- bench/read_trips.sql with the read's transaction in one round trip, as the pipelined begin
-- proposed in BENCHMARKS.md would send it: `BEGIN`, the settings with the session check, the
-- patient with its audit event and `COMMIT`, written together under one Sync. The two
-- `SELECT 1` still stand for the rate limit's round trip and the HTTP request's own.
SELECT 1;
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
WITH p AS (SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at FROM patients WHERE id = :patient AND archived_at IS NULL), audit AS (INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) SELECT :clinic::uuid, gen_random_uuid(), :user::uuid, 'patient.read', 'patient', p.id, p.id, 'pgbench', '127.0.0.1'::inet, 'success', NULL FROM p) SELECT * FROM p;
COMMIT;
\endpipeline
SELECT 1;
