-- Sealing in bounded chunks. `audit_seal` hashed every clinic's unsealed events in one
-- transaction: under load, a minute of events at once. `audit_seal_chunk` seals at most
-- `max_events` events, visits at most `max_clinics` clinics and works for about `max_ms`
-- milliseconds (a busy machine gets less done in that time, not a longer transaction),
-- then says where the next chunk starts; the server calls it until a round is done, one
-- short transaction each.
-- Clinics are visited in id order from the `clinics` table, so no chunk scans a window of
-- the whole trail to find which clinics have new events (the watermark that did so goes).

-- The digest is unchanged, byte for byte, but inlinable: no `SET` clause, `STABLE` (as
-- `concat_ws` and `to_char` are), every function schema-qualified. Inlined into the
-- sealing and verifying queries it costs about a third of a call per event.
CREATE OR REPLACE FUNCTION audit_event_digest(e audit_events) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.concat_ws('|',
        e.clinic_id, e.id,
        pg_catalog.to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        coalesce(e.user_id::text, ''), e.action, e.resource_type,
        coalesce(e.resource_id::text, ''), coalesce(e.patient_id::text, ''),
        coalesce(e.request_id, ''), coalesce(pg_catalog.host(e.ip), ''), e.outcome,
        coalesce(e.details::text, '')), 'UTF8'))
$$;

DROP FUNCTION audit_seal(interval);
DROP TABLE audit_seal_state;

-- Owning a function needs CREATE on the schema, for the length of this migration.
GRANT CREATE ON SCHEMA public TO molar_auth;

-- The sealer lists clinics (their ids only).
CREATE POLICY sealer ON clinics FOR SELECT TO molar_auth USING (true);
GRANT SELECT (id) ON clinics TO molar_auth;

-- Seals the events older than `settle` of the clinics from `from_clinic` (inclusive; NULL
-- for the first) in id order, until one of the bounds is reached (at least one clinic
-- visited, or 64 events sealed, before the time is looked at, so each chunk gets on). Returns the clinic the next chunk starts at (NULL when the
-- round is done), the seals written and the events sealed; `busy` when another instance
-- holds the sealing lock (it is sealing; this round ends).
CREATE FUNCTION audit_seal_chunk(
    settle interval, from_clinic uuid, max_events integer, max_clinics integer, max_ms integer,
    OUT next_clinic uuid, OUT seals integer, OUT events integer, OUT busy boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    c uuid;
    last audit_seals;
    cutoff timestamptz := now() - greatest(settle, interval '0');
    h bytea;
    n integer;
    first_at timestamptz;
    first_id uuid;
    last_at timestamptz;
    last_id uuid;
    e record;
    visited integer := 0;
    started timestamptz := clock_timestamp();
    budget interval := make_interval(secs => max_ms / 1000.0);
BEGIN
    next_clinic := NULL;
    seals := 0;
    events := 0;
    busy := false;
    IF NOT pg_try_advisory_xact_lock(7262012) THEN
        busy := true;
        RETURN;
    END IF;
    FOR c IN
        SELECT cl.id FROM clinics cl
        WHERE from_clinic IS NULL OR cl.id >= from_clinic
        ORDER BY cl.id
    LOOP
        IF visited >= max_clinics OR (visited > 0 AND clock_timestamp() - started > budget) THEN
            next_clinic := c;
            RETURN;
        END IF;
        visited := visited + 1;
        SELECT * INTO last FROM audit_seals s WHERE s.clinic_id = c ORDER BY s.seq DESC LIMIT 1;
        h := coalesce(last.hash, '\x'::bytea);
        n := 0;
        -- Without an OR, so that the primary key (clinic_id, at, id) bounds the scan in a
        -- generic plan too; the plain bound on `at` lets the monthly partitions before the
        -- last seal be pruned (a row comparison does not).
        FOR e IN
            SELECT ae.at, ae.id, audit_event_digest(ae) AS digest
            FROM audit_events ae
            WHERE ae.clinic_id = c AND ae.at < cutoff
              AND ae.at >= coalesce(last.to_at, '-infinity'::timestamptz)
              AND (ae.at, ae.id) > (coalesce(last.to_at, '-infinity'::timestamptz),
                                    coalesce(last.to_id, '00000000-0000-0000-0000-000000000000'::uuid))
            ORDER BY ae.at, ae.id
            LIMIT max_events - events
        LOOP
            IF n = 0 THEN
                first_at := e.at;
                first_id := e.id;
            END IF;
            h := sha256(h || e.digest);
            n := n + 1;
            last_at := e.at;
            last_id := e.id;
            EXIT WHEN n % 64 = 0 AND clock_timestamp() - started > budget;
        END LOOP;
        IF n > 0 THEN
            INSERT INTO audit_seals (clinic_id, seq, from_at, from_id, to_at, to_id,
                                     event_count, prev_hash, hash)
            VALUES (c, coalesce(last.seq, 0) + 1, first_at, first_id, last_at, last_id,
                    n, coalesce(last.hash, '\x'::bytea), h);
            seals := seals + 1;
            events := events + n;
        END IF;
        IF events >= max_events OR (n > 0 AND clock_timestamp() - started > budget) THEN
            -- This clinic may have more: the next chunk starts with it.
            next_clinic := c;
            RETURN;
        END IF;
    END LOOP;
END
$$;
ALTER FUNCTION audit_seal_chunk(interval, uuid, integer, integer, integer) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION audit_seal_chunk(interval, uuid, integer, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_seal_chunk(interval, uuid, integer, integer, integer) TO molar_app;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
