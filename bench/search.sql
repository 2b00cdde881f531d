-- What GET /api/v2/patients?q=Emma%20Hofmann&limit=20 sends (pgbench -M prepared): BEGIN,
-- then the clinic and user settings with the session check, in one round trip; the search joined to the
-- patients with its audit event (the ids shown) in one statement, and COMMIT.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
WITH page AS (SELECT row_number() OVER (ORDER BY s.score DESC, s.id DESC) AS n, s.score, p.id, p.first_name, p.last_name, p.date_of_birth, p.sex, p.email, p.phone, p.address, p.preferred_provider_id, p.medical_alerts, p.emergency_contact, p.guardian, p.responsible_party_id, p.restricted, p.care_team, p.archived_at, p.version, p.created_at, p.updated_at FROM patient_search(:q, false, NULL, NULL, 21) s JOIN patients p ON p.id = s.id), audit AS (INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, ids) SELECT :clinic::uuid, gen_random_uuid(), :user::uuid, 'patient.search', 'patient', NULL, NULL, 'pgbench', '127.0.0.1'::inet, 'success', ARRAY(SELECT id FROM page WHERE n < 21 ORDER BY n) FROM (SELECT 1) AS one) SELECT * FROM page ORDER BY n;
COMMIT;
