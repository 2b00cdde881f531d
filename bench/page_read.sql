-- The page of bench/list.sql without its audit event: the same transaction and the same
-- 51 rows, read and sent, nothing written.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at FROM patients WHERE archived_at IS NULL  ORDER BY lower(last_name), lower(first_name), id LIMIT 51;
COMMIT;
