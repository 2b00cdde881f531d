-- Every audit event also went into an index on `at` alone, made for the sealing that kept
-- one watermark across all clinics (20261123000007). Nothing reads it since sealing went
-- clinic by clinic (20261203000024): sealing, verifying and the audit API read a clinic's
-- events through the primary key (clinic_id, at, id). Each request that writes an audit
-- event (every read of health data) paid for one more index insertion and its WAL record.
-- Only pruning reads by `at` alone, and only in the default partition (events outside the
-- monthly ones), which keeps an index of its own for it.
DROP INDEX audit_events_at;
CREATE INDEX audit_events_default_at ON audit_events_default (at);
