-- What GET /api/v2/reports/day-sheet?date=<the busy day> sends (pgbench -M prepared): BEGIN,
-- then the clinic and user settings with the session check (with the sign-in's family), in
-- one round trip; the day's appointments by status, the
-- day's journal in one pass, the patients registered in the day; the audit event; COMMIT.
-- :day_from and :day_to are the day's local midnights in UTC (bench/run computes them as
-- the server does); the clinic's time zone comes from the server's cache (Redis), so no
-- statement here.
\startpipeline
BEGIN;
SELECT set_config('app.clinic_id', :clinic, true), set_config('app.user_id', :user, true), auth_check_session(:clinic, :user, 1, 'owner', :owner_sid);
\endpipeline
SELECT status, count(*) AS n FROM appointments WHERE start_at >= :day_from AND start_at < :day_to GROUP BY status;
SELECT coalesce(sum(l.amount_cents) FILTER (WHERE l.account = 'receivable' AND (t.kind = 'charge' OR (t.kind = 'reversal' AND o.kind = 'charge'))), 0)::bigint AS production, coalesce(sum(l.amount_cents) FILTER (WHERE l.account = 'receivable' AND (t.kind = 'adjustment' OR (t.kind = 'reversal' AND o.kind = 'adjustment'))), 0)::bigint AS adjustments, coalesce(-sum(l.amount_cents) FILTER (WHERE t.kind = 'refund' AND l.account IN ('cash', 'card', 'bank_transfer', 'check', 'stripe_clearing')), 0)::bigint AS refunds, coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'cash'), 0)::bigint AS cash, coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account IN ('card', 'stripe_clearing')), 0)::bigint AS card, coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'bank_transfer'), 0)::bigint AS bank_transfer, coalesce(sum(l.amount_cents) FILTER (WHERE t.kind = 'payment' AND l.account = 'check'), 0)::bigint AS "check" FROM ledger_transactions t JOIN ledger_lines l ON l.clinic_id = t.clinic_id AND l.transaction_id = t.id LEFT JOIN ledger_transactions o ON o.clinic_id = t.clinic_id AND o.id = t.reverses_id WHERE t.posted_at >= :day_from AND t.posted_at < :day_to;
SELECT count(*) AS n FROM patients WHERE created_at >= :day_from AND created_at < :day_to;
INSERT INTO audit_events (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details) VALUES (:clinic, gen_random_uuid(), :user, 'report.day_sheet', 'report', NULL, NULL, 'pgbench', '127.0.0.1'::inet, 'success', jsonb_build_object('date', :day::text));
COMMIT;
