-- What POST /api/v2/procedures/{id}/complete with the body {} sends (pgbench -M prepared),
-- signed in as the dentist the planned procedure names: BEGIN, then the clinic
-- and user settings with the session check (with the sign-in's family), in one round trip; the procedure with its code, locked; the provider's standing;
-- the completion; the charge and its two journal lines; the procedure read again; its
-- audit event; COMMIT, where the journal's deferred balance trigger runs. The clinic's
-- time zone comes from the server's cache (Redis), so no statement here.
--
-- Each transaction completes a different planned procedure, found by its id as the server
-- finds it: bench/run tops up planned procedures numbered :pbase + 1 onwards (ids of kind
-- 7, see bench/run), and client c completes numbers :pbase + 1 + c, + :conns, + 2 × :conns…
-- (pgbench keeps :k between a client's transactions). The server's request carries the
-- id; here the lock's statement spells it from the number. The charge's id, a UUIDv7 made
-- by the server, is derived from the procedure's (kind 11), so that both inserts name it.
\set n :pbase + 1 + :client_id + :conns * :k
\set k :k + 1
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :dentist, true), auth_check_session(:clinic, :dentist, 1, 'dentist', :dentist_sid);
\endpipeline
SELECT p.id, p.patient_id, p.procedure_code_id, c.code, c.description, p.tooth, p.surfaces, p.provider_id, p.status, p.fee_cents, p.appointment_id, p.completed_on, p.note, p.reversed_at, p.reversed_by, p.reversal_reason, p.version, p.created_by, p.created_at, p.updated_at FROM procedures p JOIN procedure_codes c ON c.clinic_id = p.clinic_id AND c.id = p.procedure_code_id WHERE p.id = ('00000007-0000-7000-8000-' || lpad(to_hex(:n::bigint), 12, '0'))::uuid FOR UPDATE OF p \gset p_
SELECT is_provider, active FROM users WHERE id = :p_provider_id;
UPDATE procedures SET status = 'completed', provider_id = :p_provider_id, completed_on = :today, version = version + 1, updated_at = now() WHERE id = :p_id;
INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, procedure_id, memo, created_by) VALUES (:clinic, ('0000000b' || substr(:p_id::text, 9))::uuid, 'charge', :p_patient_id, :p_id, 'procedure completed', :dentist);
INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) VALUES (:clinic, ('0000000b' || substr(:p_id::text, 9))::uuid, 1, 'receivable', :p_patient_id, :p_fee_cents), (:clinic, ('0000000b' || substr(:p_id::text, 9))::uuid, 2, 'revenue', NULL, -:p_fee_cents::bigint);
SELECT p.id, p.patient_id, p.procedure_code_id, c.code, c.description, p.tooth, p.surfaces, p.provider_id, p.status, p.fee_cents, p.appointment_id, p.completed_on, p.note, p.reversed_at, p.reversed_by, p.reversal_reason, p.version, p.created_by, p.created_at, p.updated_at FROM procedures p JOIN procedure_codes c ON c.clinic_id = p.clinic_id AND c.id = p.procedure_code_id WHERE p.id = :p_id;
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) VALUES (:clinic, gen_random_uuid(), :dentist, 'procedure.complete', 'procedure', :p_id, :p_patient_id, 'pgbench', '127.0.0.1'::inet, 'success', jsonb_build_object('charge_id', ('0000000b' || substr(:p_id::text, 9))::uuid, 'fee_cents', :p_fee_cents::bigint));
COMMIT;
