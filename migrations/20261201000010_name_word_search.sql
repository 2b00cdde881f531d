-- Name search by words: its cost follows the size of the caller's clinic, not of the
-- whole patients table.
--
-- The trigram index on (clinic_id, search_name) kept each trigram's posting list across
-- every clinic, so a search in one clinic read the entries of a million patients and then
-- re-checked thousands of rows on the heap. Now:
--   * name_lexicon holds every distinct name word once, with no link to any clinic or
--     patient; its trigram index finds the words that start with or resemble each word
--     of the query (a small index: names repeat across clinics), of which only those the
--     caller's clinic carries are kept;
--   * patient_name_words holds (clinic, word, patient), so the patients of one clinic
--     carrying those words are read from one B-tree, index only;
--   * the best 100 are scored as before (whole-name similarity plus the share of query
--     words matched by prefix or a small edit distance).
-- Both tables are maintained by a trigger on patients and readable only by molar_auth,
-- which owns the trigger and search functions; the server's role cannot read them.

-- Load pg_trgm in this session, so that its settings are known (not placeholders, which
-- only a superuser may attach to a function).
SELECT similarity('molar', 'molar');

GRANT CREATE ON SCHEMA public TO molar_auth;

-- The words of a name, lower case, split where pg_trgm splits words (at anything that is
-- not a letter or a digit).
CREATE FUNCTION name_words_of(name text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT w ORDER BY w), '{}')
    FROM regexp_split_to_table(lower(name), '[^[:alnum:]]+') AS w
    WHERE w <> ''
$$;

CREATE TABLE name_lexicon (
    word text PRIMARY KEY
);
CREATE INDEX name_lexicon_similar ON name_lexicon USING gin (word gin_trgm_ops);
-- Prefix ranges (byte order, whatever the collation).
CREATE INDEX name_lexicon_prefix ON name_lexicon (word text_pattern_ops);

CREATE TABLE patient_name_words (
    clinic_id  uuid    NOT NULL,
    word       text    NOT NULL,
    patient_id uuid    NOT NULL,
    -- The patient's, so that archived patients are left out before the best are chosen.
    archived   boolean NOT NULL,
    PRIMARY KEY (clinic_id, word, patient_id) INCLUDE (archived),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id) ON DELETE CASCADE
);
CREATE INDEX patient_name_words_patient ON patient_name_words (clinic_id, patient_id);

ALTER TABLE name_lexicon ENABLE ROW LEVEL SECURITY;
ALTER TABLE name_lexicon FORCE ROW LEVEL SECURITY;
CREATE POLICY search ON name_lexicon TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT ON name_lexicon TO molar_auth;

ALTER TABLE patient_name_words ENABLE ROW LEVEL SECURITY;
ALTER TABLE patient_name_words FORCE ROW LEVEL SECURITY;
-- The trigger and search functions filter by clinic themselves (from the patient row,
-- or from the transaction's clinic setting).
CREATE POLICY search ON patient_name_words TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON patient_name_words TO molar_auth;

CREATE FUNCTION patients_sync_name_words() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    new_words text[] := name_words_of(NEW.search_name);
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF new_words = name_words_of(OLD.search_name) THEN
            IF (NEW.archived_at IS NULL) <> (OLD.archived_at IS NULL) THEN
                UPDATE patient_name_words w SET archived = NEW.archived_at IS NOT NULL
                WHERE w.clinic_id = NEW.clinic_id AND w.patient_id = NEW.id;
            END IF;
            RETURN NULL;
        END IF;
        DELETE FROM patient_name_words w
        WHERE w.clinic_id = OLD.clinic_id AND w.patient_id = OLD.id;
    END IF;
    INSERT INTO name_lexicon (word) SELECT unnest(new_words) ON CONFLICT DO NOTHING;
    INSERT INTO patient_name_words (clinic_id, word, patient_id, archived)
    SELECT NEW.clinic_id, unnest(new_words), NEW.id, NEW.archived_at IS NOT NULL;
    RETURN NULL;
END
$$;
ALTER FUNCTION patients_sync_name_words() OWNER TO molar_auth;
REVOKE EXECUTE ON FUNCTION patients_sync_name_words() FROM PUBLIC;

CREATE TRIGGER patients_name_words
    AFTER INSERT OR UPDATE OF first_name, last_name, archived_at ON patients
    FOR EACH ROW EXECUTE FUNCTION patients_sync_name_words();

-- Existing patients. The trigger came first: its lock holds back other writers to patients
-- until this migration commits, so no patient is created between the copy and the trigger
-- (about 30 s per million patients; reads go on). The migrating role is a member of
-- molar_auth, whose policy on patients reads every clinic.
INSERT INTO name_lexicon (word)
SELECT DISTINCT unnest(name_words_of(p.search_name)) FROM patients p;
INSERT INTO patient_name_words (clinic_id, word, patient_id, archived)
SELECT p.clinic_id, unnest(name_words_of(p.search_name)), p.id, p.archived_at IS NOT NULL
FROM patients p;

-- Name search no longer reads the whole-table trigram index.
DROP INDEX patients_search_name;

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
        -- clinic's names never change what a search finds. One query per word, so that
        -- the trigram index sees the word as a constant.
        FOREACH qword IN ARRAY name_words_of(needle) LOOP
            -- Short words need the lower bar ("jonh" is 0.25 like "john"); longer ones
            -- have enough trigrams for 0.3, which keeps the index's candidates few.
            PERFORM set_config('pg_trgm.similarity_threshold',
                               CASE WHEN length(qword) >= 5 THEN '0.3' ELSE '0.2' END, true);
            SELECT m_words || array_agg(m.word), m_weights || array_agg(m.quality * length(qword))
            INTO m_words, m_weights
            FROM (
                SELECT l.word, max(l.quality) AS quality
                FROM (
                    (SELECT x.word, CASE WHEN x.word = qword THEN 1.0 ELSE 0.9 END::real AS quality
                     FROM name_lexicon x
                     WHERE length(qword) >= 2
                       AND x.word ~>=~ qword AND x.word ~<~ (qword || chr(1114111))
                       AND EXISTS (SELECT 1 FROM patient_name_words w
                                   WHERE w.clinic_id = c AND w.word = x.word
                                     AND (include_archived OR NOT w.archived))
                     ORDER BY length(x.word), x.word LIMIT 200)
                    UNION ALL
                    (SELECT qword, 1.0::real)
                    UNION ALL
                    (SELECT x.word, similarity(x.word, qword)
                     FROM name_lexicon x
                     WHERE x.word % qword
                       AND EXISTS (SELECT 1 FROM patient_name_words w
                                   WHERE w.clinic_id = c AND w.word = x.word
                                     AND (include_archived OR NOT w.archived))
                     ORDER BY similarity(x.word, qword) DESC, x.word LIMIT 10)
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
                               WHERE nw LIKE qw || '%'
                                  -- (levenshtein() takes at most 255 characters)
                                  OR CASE WHEN length(qw) BETWEEN 4 AND 255
                                          THEN levenshtein(qw, nw) <= 2
                                          WHEN length(qw) BETWEEN 2 AND 3 AND length(nw) <= 4
                                          THEN levenshtein(qw, nw) <= 1
                                          ELSE false END))::real
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

REVOKE CREATE ON SCHEMA public FROM molar_auth;
