-- What GET /api/v2/patients/{id} sends (pgbench -M prepared): the clinic setting, the
-- session check, the patient, the audit event. The server sends BEGIN and the setting
-- in one round trip; pgbench needs two.
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true);
SELECT active, role, auth_version FROM users WHERE clinic_id = :clinic AND id = :user;
SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, archived_at, version, created_at, updated_at FROM patients WHERE id = :patient;
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) VALUES (:clinic, gen_random_uuid(), :user, 'patient.read', 'patient', :patient, :patient, 'pgbench', '127.0.0.1', 'success', NULL);
COMMIT;
