-- What GET /api/v2/patients?limit=50 sends (pgbench -M prepared).
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true);
SELECT active, role, auth_version FROM users WHERE clinic_id = :clinic AND id = :user;
SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, archived_at, version, created_at, updated_at FROM patients WHERE (false OR archived_at IS NULL) AND (NULL::text IS NULL OR (lower(last_name), lower(first_name), id) > (NULL, NULL, NULL::uuid)) ORDER BY lower(last_name), lower(first_name), id LIMIT 51;
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) VALUES (:clinic, gen_random_uuid(), :user, 'patient.list', 'patient', NULL, NULL, 'pgbench', '127.0.0.1', 'success', :ids);
COMMIT;
