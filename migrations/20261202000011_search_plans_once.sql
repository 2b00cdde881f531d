-- Name search plans once per connection, and trigram lookalikes count only when the
-- clinic lacks the word typed.
--
-- Planning was a fifth of a name search's time in PostgreSQL: plan_cache_mode =
-- force_custom_plan planned every statement of every search again. The statements of the
-- name branch now run on generic plans (the other branches still plan each search, since
-- how selective a phone fragment is depends on its value). Under a generic plan the
-- clinic probes, written as EXISTS, became merge joins over every word of the clinic; they
-- are now subqueries that probe the index word by word.
--
-- A similar word found by trigrams now counts only within the edit distance the scoring
-- accepts when the clinic carries the query word or words it begins: "emma" no longer
-- brings in the 2,000 Emilias of the bench clinic at a fifth of the weight (only to rank
-- them below every Emma). A word the clinic does not carry keeps its ten most similar
-- words, whatever the distance, so typos still find names.

-- Load pg_trgm in this session, so that its settings are known (not placeholders, which
-- only a superuser may attach to a function).
SELECT similarity('molar', 'molar');

-- Whether query word qw matches name word nw: nw begins with qw, or is within a small edit
-- distance (levenshtein() takes at most 255 characters). Used for ranking and for which
-- similar words count.
CREATE FUNCTION name_word_matches(qw text, nw text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT nw LIKE qw || '%'
        OR CASE WHEN length(qw) BETWEEN 4 AND 255 THEN public.levenshtein(qw, nw) <= 2
                WHEN length(qw) BETWEEN 2 AND 3 AND length(nw) <= 4
                THEN public.levenshtein(qw, nw) <= 1
                ELSE false END
$$;

CREATE OR REPLACE FUNCTION patient_search(
    q text, include_archived boolean, after_score real, after_id uuid, lim integer
) RETURNS TABLE (id uuid, score real)
LANGUAGE plpgsql STABLE SECURITY DEFINER
-- A page of results, so the caller's join to patients goes by primary key.
ROWS 50
SET search_path = public, pg_temp
SET pg_trgm.similarity_threshold = 0.3
-- A cached generic plan cannot know how selective a phone fragment or a short prefix is:
-- those branches plan each search. The name branch switches to generic plans below.
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    c uuid := nullif(current_setting('app.clinic_id', true), '')::uuid;
    needle text := lower(btrim(q));
    digits text := regexp_replace(q, '[^0-9]', '', 'g');
    words text[] := regexp_split_to_array(lower(btrim(q)), '\s+');
    dob date;
    qword text;
    m_words text[] := '{}';
    m_weights real[] := '{}';
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
        -- For each word of the query, the words like it that this clinic's patients
        -- carry, with how well each matches: the word itself 1, words it begins 0.9 (the
        -- 200 shortest; from two letters on), the 10 most similar by trigrams their
        -- similarity. Only the clinic's own words compete for those places, so another
        -- clinic's names never change what a search finds. When the clinic carries the
        -- word or words it begins, a similar word counts only within the edit distance
        -- that scoring accepts ("emilia" does not bring every Emilia to "emma"); a word
        -- the clinic does not carry keeps all ten, for typos. One statement per word, so
        -- that the trigram index sees the word as a value of its own.
        --
        -- These statements, and the one that gathers the patients, plan the same way
        -- whatever the words: a generic plan, made once per connection, saves planning
        -- them on every search. Clinic probes are subqueries, not joins, so that the
        -- generic plan probes the index word by word.
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
        FOREACH qword IN ARRAY name_words_of(needle) LOOP
            -- Short words need the lower bar ("jonh" is 0.25 like "john"); longer ones
            -- have enough trigrams for 0.3, which keeps the index's candidates few.
            PERFORM set_config('pg_trgm.similarity_threshold',
                               CASE WHEN length(qword) >= 5 THEN '0.3' ELSE '0.2' END, true);
            WITH prefixed AS (
                SELECT x.word, CASE WHEN x.word = qword THEN 1.0 ELSE 0.9 END::real AS quality
                FROM name_lexicon x
                WHERE length(qword) >= 2
                  AND x.word ~>=~ qword AND x.word ~<~ (qword || chr(1114111))
                  AND (SELECT true FROM patient_name_words w
                       WHERE w.clinic_id = c AND w.word = x.word
                         AND (include_archived OR NOT w.archived) LIMIT 1)
                ORDER BY length(x.word), x.word LIMIT 200
            ), resembling AS (
                SELECT x.word, similarity(x.word, qword) AS quality
                FROM name_lexicon x
                WHERE x.word % qword
                  AND (SELECT true FROM patient_name_words w
                       WHERE w.clinic_id = c AND w.word = x.word
                         AND (include_archived OR NOT w.archived) LIMIT 1)
                ORDER BY similarity(x.word, qword) DESC, x.word LIMIT 10
            )
            SELECT m_words || array_agg(m.word), m_weights || array_agg(m.quality * length(qword))
            INTO m_words, m_weights
            FROM (
                SELECT l.word, max(l.quality) AS quality
                FROM (
                    SELECT * FROM prefixed
                    UNION ALL
                    SELECT qword, 1.0::real
                    UNION ALL
                    SELECT * FROM resembling r
                    WHERE name_word_matches(qword, r.word) OR NOT EXISTS (SELECT FROM prefixed)
                ) l
                GROUP BY l.word
            ) m;
        END LOOP;
        RETURN QUERY
            WITH matches AS (
                SELECT u.word, u.weight FROM unnest(m_words, m_weights) AS u(word, weight)
            ), candidates AS (
                -- The clinic's patients carrying those words, each match weighted by the
                -- length of the query word it matches (as trigram similarity weighs
                -- it), so a surname outweighs a common first name.
                SELECT w.patient_id
                FROM matches m
                JOIN patient_name_words w ON w.clinic_id = c AND w.word = m.word
                WHERE include_archived OR NOT w.archived
                GROUP BY w.patient_id
                ORDER BY sum(m.weight) DESC, w.patient_id DESC
                LIMIT 100
            ), scored AS (
                -- Whole-name likeness, plus the share of query words that match a name
                -- word by prefix or within a small edit distance (so "Jonh Smiht" ranks
                -- John Smith first).
                SELECT p.id,
                       (greatest(similarity(p.search_name, needle),
                                 word_similarity(needle, p.search_name))
                        + (SELECT count(*) FROM unnest(words) qw
                           WHERE EXISTS (
                               SELECT 1 FROM unnest(regexp_split_to_array(p.search_name, '\s+')) nw
                               WHERE name_word_matches(qw, nw)))::real
                          / greatest(cardinality(words), 1))::real AS score
                FROM candidates k
                JOIN patients p ON p.clinic_id = c AND p.id = k.patient_id
                WHERE include_archived OR p.archived_at IS NULL
            )
            SELECT s.id, s.score FROM scored s
            WHERE after_id IS NULL OR (s.score, s.id) < (after_score, after_id)
            ORDER BY s.score DESC, s.id DESC LIMIT lim;
    END IF;
END
$$;
