-- What POST /api/v2/payments sends for a payment with no allocations under a fresh
-- Idempotency-Key (pgbench -M prepared), signed in as the owner, in the server's order.
-- Two transactions, each opened as the server opens it: BEGIN, then the clinic and
-- user settings with the session check (with the sign-in's family), in one round trip.
--   1. The key's claim: expired claims of the key deleted, the key inserted, COMMIT.
--   2. The work: the payer looked up; the payer's family (check_allocations asks for it
--      even when there are no allocations); the journal transaction and its two lines
--      (the method's account debited, the payer's credit credited) as ledger::post
--      inserts them; the payment; the (empty) allocations; the audit event; the payment
--      read back with its allocations and refunds; the key completed with the response;
--      COMMIT, where the journal's deferred balance trigger runs for the transaction and
--      each line.
-- Where it differs from the server: the payer's id is spelled from a number (client c
-- pays for patient number 1,000,001 + (c + :conns × k) mod 100, the hundred patients
-- that bench/scenarios/pay.lua pays for, k counting the client's payments), and the
-- later statements use the id that lookup returned; the journal transaction's and the
-- payment's ids are UUIDv7 made by the INSERT (returned to pgbench) rather than by the
-- server; the lines' arrays and the empty allocations are written in the statements
-- rather than bound; every payment is by card; the key is a number (:payrun, the client
-- and k), the request hash one constant (:payhash), the audit event's id is random (as
-- in the other scripts) rather than a UUIDv7, and the stored response and the audit
-- details are built by jsonb_build_object rather than bound.
\set n 1000001 + (:client_id + :conns * :k) % 100
\set key :payrun * 1000000000 + :client_id * 10000000 + :k
\set amount 1000 + random(0, 49) * 100
\set k :k + 1
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
DELETE FROM idempotency_keys WHERE user_id = :user AND key = :key AND (created_at < now() - interval '24 hours' OR (status IS NULL AND created_at < now() - interval '10 minutes'));
INSERT INTO idempotency_keys (clinic_id, user_id, key, request_hash) VALUES (:clinic, :user, :key, :payhash) ON CONFLICT DO NOTHING;
COMMIT;
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
SELECT id AS pat FROM patients WHERE id = ('00000004-0000-7000-8000-' || lpad(to_hex(:n::bigint), 12, '0'))::uuid AND archived_at IS NULL \gset
SELECT id FROM patients WHERE id = :pat OR responsible_party_id = :pat;
INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, payment_id, invoice_id, memo, created_by) VALUES (:clinic, overlay(overlay(replace(gen_random_uuid()::text, '-', '') placing lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') from 1 for 12) placing '7' from 13 for 1)::uuid, 'payment', :pat, overlay(overlay(replace(gen_random_uuid()::text, '-', '') placing lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') from 1 for 12) placing '7' from 13 for 1)::uuid, NULL, NULL, :user) RETURNING id AS t_id, payment_id AS p_id \gset
INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) SELECT :clinic, :t_id, * FROM UNNEST('{1,2}'::int2[], '{card,patient_credit}'::text[], ARRAY[NULL, :pat::uuid], ARRAY[:amount::bigint, -:amount::bigint]);
INSERT INTO payments (clinic_id, id, patient_id, amount_cents, method, received_at, reference, transaction_id, created_by) VALUES (:clinic, :p_id, :pat, :amount, 'card', coalesce(NULL::timestamptz, now()), NULL, :t_id, :user);
INSERT INTO allocations (clinic_id, id, invoice_id, amount_cents, payment_id, transaction_id) SELECT :clinic, *, :p_id, :t_id FROM UNNEST('{}'::uuid[], '{}'::uuid[], '{}'::bigint[]);
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) VALUES (:clinic, gen_random_uuid(), :user, 'payment.create', 'payment', :p_id, :pat, 'pgbench', '127.0.0.1'::inet, 'success', jsonb_build_object('amount_cents', :amount::bigint, 'allocated_cents', 0));
SELECT id, patient_id, amount_cents, method, received_at, reference, created_by, created_at FROM payments WHERE id = :p_id;
SELECT payment_id, invoice_id, sum(amount_cents)::bigint AS amount_cents FROM allocations WHERE payment_id = ANY(ARRAY[:p_id::uuid]) GROUP BY payment_id, invoice_id HAVING sum(amount_cents) <> 0 ORDER BY invoice_id;
SELECT id, payment_id, amount_cents, reason, created_by, created_at FROM refunds WHERE payment_id = ANY(ARRAY[:p_id::uuid]) ORDER BY created_at, id;
UPDATE idempotency_keys SET status = 201, response = jsonb_build_object('id', :p_id::uuid, 'patient_id', :pat::uuid, 'amount_cents', :amount::bigint, 'method', 'card', 'received_at', now(), 'reference', NULL, 'allocations', '[]'::jsonb, 'refunds', '[]'::jsonb, 'refundable_cents', :amount::bigint, 'created_by', :user::uuid, 'created_at', now()), location = '/api/v2/payments/' || :p_id WHERE user_id = :user AND key = :key;
COMMIT;
