-- What GET /api/v2/patients/{id} sends (pgbench -M prepared). The server sends BEGIN, then
-- the clinic and user settings with the session check in one SELECT, as one simple query
-- (one round trip); pgbench sends them as one pipeline. Then the patient and its audit
-- event in one statement, and COMMIT.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
WITH p AS (SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at FROM patients WHERE id = :patient AND archived_at IS NULL), audit AS (INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) SELECT :clinic::uuid, gen_random_uuid(), :user::uuid, 'patient.read', 'patient', p.id, p.id, 'pgbench', '127.0.0.1'::inet, 'success', NULL FROM p) SELECT * FROM p;
COMMIT;
