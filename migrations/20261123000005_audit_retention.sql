-- Audit retention: old months are dropped whole (by the owning role, `molar audit prune`),
-- and the chain check keeps verifying what remains.

-- One row: events before this instant were removed on purpose.
CREATE TABLE audit_retention (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_before timestamptz NOT NULL,
    pruned_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit_retention ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_retention FORCE ROW LEVEL SECURITY;
CREATE POLICY verifier ON audit_retention FOR SELECT TO molar_auth USING (true);
CREATE POLICY pruner ON audit_retention TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT ON audit_retention TO molar_auth;

-- Drops the monthly partitions that end on or before `before` and the default
-- partition's rows older than it, and records the cut-off. Owner only.
CREATE FUNCTION audit_prune(before timestamptz) RETURNS integer
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    part record;
    month_start timestamptz;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname::text AS name FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_\d{4}_\d{2}$'
    LOOP
        month_start := (to_date(substring(part.name from 14), 'YYYY_MM')::timestamp AT TIME ZONE 'UTC');
        IF month_start + interval '1 month' <= before THEN
            EXECUTE format('DROP TABLE %I', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM audit_events_default WHERE at < before;
    INSERT INTO audit_retention (singleton, pruned_before) VALUES (true, before)
    ON CONFLICT (singleton) DO UPDATE
        SET pruned_before = greatest(audit_retention.pruned_before, excluded.pruned_before),
            pruned_at = now();
    RETURN dropped;
END
$$;
REVOKE ALL ON FUNCTION audit_prune(timestamptz) FROM PUBLIC;

-- As before, but a seal whose range begins before the retention cut-off is checked for
-- its place in the chain only: its events were removed on purpose.
CREATE OR REPLACE FUNCTION audit_verify()
RETURNS TABLE (clinic_id uuid, seq bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    s audit_seals;
    prev audit_seals;
    c uuid;
    h bytea;
    n integer;
    e audit_events;
    cutoff timestamptz;
BEGIN
    SELECT r.pruned_before INTO cutoff FROM audit_retention r;
    FOR c IN SELECT DISTINCT x.clinic_id FROM audit_seals x LOOP
        prev := NULL;
        FOR s IN SELECT * FROM audit_seals x WHERE x.clinic_id = c ORDER BY x.seq LOOP
            IF s.seq <> coalesce(prev.seq, 0) + 1 THEN
                clinic_id := c; seq := s.seq; problem := 'a seal is missing before this one';
                RETURN NEXT; EXIT;
            END IF;
            IF s.prev_hash <> coalesce(prev.hash, '\x'::bytea) THEN
                clinic_id := c; seq := s.seq; problem := 'the seal does not chain to the previous seal';
                RETURN NEXT; EXIT;
            END IF;
            IF cutoff IS NULL OR s.from_at >= cutoff THEN
                h := s.prev_hash;
                n := 0;
                FOR e IN
                    SELECT * FROM audit_events ae
                    WHERE ae.clinic_id = c
                      AND (prev.seq IS NULL OR (ae.at, ae.id) > (prev.to_at, prev.to_id))
                      AND (ae.at, ae.id) <= (s.to_at, s.to_id)
                    ORDER BY ae.at, ae.id
                LOOP
                    h := sha256(h || audit_event_digest(e));
                    n := n + 1;
                END LOOP;
                IF n <> s.event_count THEN
                    clinic_id := c; seq := s.seq;
                    problem := format('the sealed range holds %s events, the seal counted %s', n, s.event_count);
                    RETURN NEXT; EXIT;
                END IF;
                IF h <> s.hash THEN
                    clinic_id := c; seq := s.seq; problem := 'an event in the sealed range was changed';
                    RETURN NEXT; EXIT;
                END IF;
            END IF;
            prev := s;
        END LOOP;
    END LOOP;
END
$$;
