-- Sealing looks only at events since the last seal (a global watermark), not at the whole
-- trail; and name search scores only its best trigram candidates.

-- Load pg_trgm in this session, so that its settings are known (not placeholders, which
-- only a superuser may attach to a function).
SELECT similarity('molar', 'molar');

CREATE INDEX audit_events_at ON audit_events (at);

CREATE TABLE audit_seal_state (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    sealed_until timestamptz NOT NULL
);
ALTER TABLE audit_seal_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_seal_state FORCE ROW LEVEL SECURITY;
CREATE POLICY sealer ON audit_seal_state TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON audit_seal_state TO molar_auth;

GRANT CREATE ON SCHEMA public TO molar_auth;

CREATE OR REPLACE FUNCTION audit_seal(settle interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    c uuid;
    last audit_seals;
    cutoff timestamptz := now() - greatest(settle, interval '0');
    since timestamptz;
    h bytea;
    n integer;
    first_e audit_events;
    last_e audit_events;
    e audit_events;
    sealed integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7262012) THEN
        RETURN 0;
    END IF;
    SELECT s.sealed_until INTO since FROM audit_seal_state s;
    IF since IS NOT NULL AND since >= cutoff THEN
        RETURN 0;
    END IF;
    FOR c IN
        SELECT DISTINCT ae.clinic_id FROM audit_events ae
        WHERE ae.at < cutoff AND (since IS NULL OR ae.at >= since)
    LOOP
        SELECT * INTO last FROM audit_seals s WHERE s.clinic_id = c ORDER BY s.seq DESC LIMIT 1;
        h := coalesce(last.hash, '\x'::bytea);
        n := 0;
        first_e := NULL;
        FOR e IN
            SELECT * FROM audit_events ae
            WHERE ae.clinic_id = c AND ae.at < cutoff
              AND (last.seq IS NULL OR (ae.at, ae.id) > (last.to_at, last.to_id))
            ORDER BY ae.at, ae.id
        LOOP
            IF n = 0 THEN first_e := e; END IF;
            h := sha256(h || audit_event_digest(e));
            n := n + 1;
            last_e := e;
        END LOOP;
        IF n > 0 THEN
            INSERT INTO audit_seals (clinic_id, seq, from_at, from_id, to_at, to_id,
                                     event_count, prev_hash, hash)
            VALUES (c, coalesce(last.seq, 0) + 1, first_e.at, first_e.id, last_e.at, last_e.id,
                    n, coalesce(last.hash, '\x'::bytea), h);
            sealed := sealed + 1;
        END IF;
    END LOOP;
    INSERT INTO audit_seal_state (singleton, sealed_until) VALUES (true, cutoff)
    ON CONFLICT (singleton) DO UPDATE SET sealed_until = excluded.sealed_until;
    RETURN sealed;
END
$$;

CREATE OR REPLACE FUNCTION patient_search(
    q text, include_archived boolean, after_score real, after_id uuid, lim integer
) RETURNS TABLE (id uuid, score real)
LANGUAGE plpgsql STABLE SECURITY DEFINER
-- A page of results, so the caller's join to patients goes by primary key.
ROWS 50
SET search_path = public, pg_temp
SET pg_trgm.similarity_threshold = 0.3
-- A cached generic plan cannot know how selective a search term is; plan each search.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    c uuid := nullif(current_setting('app.clinic_id', true), '')::uuid;
    needle text := lower(btrim(q));
    digits text := regexp_replace(q, '[^0-9]', '', 'g');
    words text[] := regexp_split_to_array(lower(btrim(q)), '\s+');
    dob date;
BEGIN
    IF c IS NULL OR needle = '' THEN
        RETURN;
    END IF;
    IF needle ~ '^\d{4}-\d{2}-\d{2}$' THEN
        BEGIN
            dob := needle::date;
        EXCEPTION WHEN others THEN
            dob := NULL;
        END;
    END IF;
    IF dob IS NOT NULL THEN
        RETURN QUERY
            SELECT p.id, 1.0::real FROM patients p
            WHERE p.clinic_id = c AND p.date_of_birth = dob
              AND (include_archived OR p.archived_at IS NULL)
              AND (after_id IS NULL OR (1.0::real, p.id) < (after_score, after_id))
            ORDER BY 2 DESC, 1 DESC LIMIT lim;
    ELSIF position('@' IN needle) > 0 THEN
        RETURN QUERY
            SELECT p.id, 1.0::real FROM patients p
            WHERE p.clinic_id = c AND p.email_lower = needle
              AND (include_archived OR p.archived_at IS NULL)
              AND (after_id IS NULL OR (1.0::real, p.id) < (after_score, after_id))
            ORDER BY 2 DESC, 1 DESC LIMIT lim;
    ELSIF needle ~ '^[0-9 +().-]+$' AND length(digits) >= 3 THEN
        RETURN QUERY
            SELECT p.id, 1.0::real FROM patients p
            WHERE p.clinic_id = c AND p.phone_digits LIKE '%' || digits || '%'
              AND (include_archived OR p.archived_at IS NULL)
              AND (after_id IS NULL OR (1.0::real, p.id) < (after_score, after_id))
            ORDER BY 2 DESC, 1 DESC LIMIT lim;
    ELSIF length(needle) < 3 THEN
        -- Too short for trigrams: names that start with it.
        RETURN QUERY
            SELECT p.id, 1.0::real FROM patients p
            WHERE p.clinic_id = c
              AND (lower(p.last_name) LIKE needle || '%' OR lower(p.first_name) LIKE needle || '%')
              AND (include_archived OR p.archived_at IS NULL)
              AND (after_id IS NULL OR (1.0::real, p.id) < (after_score, after_id))
            ORDER BY 2 DESC, 1 DESC LIMIT lim;
    ELSE
        -- Trigram candidates at similarity 0.3; when that finds few (a badly mistyped
        -- name), widen to 0.2. The choice depends on the query alone, so every page of
        -- one search uses the same candidates.
        IF (SELECT count(*) FROM (SELECT 1 FROM patients p
                                  WHERE p.clinic_id = c AND p.search_name % needle LIMIT 20) x) < 20 THEN
            PERFORM set_config('pg_trgm.similarity_threshold', '0.2', true);
        END IF;
        -- The best 200 by trigram similarity are scored: the share of query words that
        -- match a name word by prefix or within a small edit distance is added (so
        -- "Jonh Smiht" ranks John Smith first).
        RETURN QUERY
            WITH candidates AS (
                SELECT p.id, p.search_name,
                       greatest(similarity(p.search_name, needle),
                                word_similarity(needle, p.search_name)) AS sim
                FROM patients p
                WHERE p.clinic_id = c AND p.search_name % needle
                  AND (include_archived OR p.archived_at IS NULL)
                ORDER BY sim DESC, p.id DESC
                LIMIT 200
            ), scored AS (
                SELECT k.id,
                       (k.sim + (SELECT count(*) FROM unnest(words) qw
                                 WHERE EXISTS (
                                     SELECT 1 FROM unnest(regexp_split_to_array(k.search_name, '\s+')) nw
                                     WHERE nw LIKE qw || '%'
                                        OR (length(qw) > 3 AND levenshtein(qw, nw) <= 2)
                                        OR (length(qw) BETWEEN 2 AND 3 AND levenshtein(qw, nw) <= 1
                                            AND length(nw) <= 4)))::real
                                / greatest(cardinality(words), 1))::real AS score
                FROM candidates k
            )
            SELECT s.id, s.score FROM scored s
            WHERE after_id IS NULL OR (s.score, s.id) < (after_score, after_id)
            ORDER BY s.score DESC, s.id DESC LIMIT lim;
    END IF;
END
$$;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
