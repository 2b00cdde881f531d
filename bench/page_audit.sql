-- The audit event of bench/list.sql without its page: the same transaction and the same
-- row, its 50 ids given (:ids, the first page's), nothing read.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, ids) VALUES (:clinic::uuid, gen_random_uuid(), :user::uuid, 'patient.list', 'patient', NULL, NULL, 'pgbench', '127.0.0.1'::inet, 'success', :ids::uuid[]);
COMMIT;
