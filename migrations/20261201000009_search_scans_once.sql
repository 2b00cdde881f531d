-- Name search scans the trigram index once, not twice: the count that chose between
-- similarity 0.3 and 0.2 ran the same index scan as the search itself.

-- Load pg_trgm in this session, so that its settings are known (not placeholders, which
-- only a superuser may attach to a function).
SELECT similarity('molar', 'molar');

GRANT CREATE ON SCHEMA public TO molar_auth;

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
    threshold text;
    cand_ids uuid[];
    cand_names text[];
    cand_sims real[];
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
        -- The best 200 trigram candidates at similarity 0.3; when that finds fewer than
        -- 20 (a badly mistyped name), at 0.2. One index scan in the common case (an
        -- earlier version counted first and then scanned again). The choice depends on
        -- the query alone, so every page of one search uses the same candidates.
        FOREACH threshold IN ARRAY ARRAY['0.3', '0.2'] LOOP
            PERFORM set_config('pg_trgm.similarity_threshold', threshold, true);
            SELECT array_agg(k.id ORDER BY k.sim DESC, k.id DESC),
                   array_agg(k.search_name ORDER BY k.sim DESC, k.id DESC),
                   array_agg(k.sim ORDER BY k.sim DESC, k.id DESC)
            INTO cand_ids, cand_names, cand_sims
            FROM (
                SELECT p.id, p.search_name,
                       greatest(similarity(p.search_name, needle),
                                word_similarity(needle, p.search_name)) AS sim
                FROM patients p
                WHERE p.clinic_id = c AND p.search_name % needle
                  AND (include_archived OR p.archived_at IS NULL)
                ORDER BY sim DESC, p.id DESC
                LIMIT 200
            ) k;
            EXIT WHEN coalesce(cardinality(cand_ids), 0) >= 20;
        END LOOP;
        -- The candidates are scored: the share of query words that match a name word by
        -- prefix or within a small edit distance is added (so "Jonh Smiht" ranks John
        -- Smith first).
        RETURN QUERY
            WITH candidates AS (
                SELECT u.id, u.search_name, u.sim
                FROM unnest(cand_ids, cand_names, cand_sims) AS u(id, search_name, sim)
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
