-- Patients and the clinical record: demographics, search, odontogram entries, signed
-- notes and periodontal charts.

-- Trusted extensions: the database owner may create them.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;

GRANT CREATE ON SCHEMA public TO molar_auth;

CREATE TABLE patients (
    clinic_id             uuid        NOT NULL REFERENCES clinics (id),
    id                    uuid        NOT NULL,
    first_name            text        NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    last_name             text        NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    date_of_birth         date        NOT NULL,
    sex                   text        CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    email                 text        CHECK (length(email) <= 254),
    phone                 text        CHECK (length(phone) <= 40),
    address               jsonb,
    preferred_provider_id uuid,
    medical_alerts        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    emergency_contact     jsonb,
    guardian              jsonb,
    responsible_party_id  uuid,
    archived_at           timestamptz,
    version               integer     NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Search keys, maintained by PostgreSQL.
    search_name  text GENERATED ALWAYS AS (lower(first_name || ' ' || last_name)) STORED,
    phone_digits text GENERATED ALWAYS AS (regexp_replace(coalesce(phone, ''), '[^0-9]', '', 'g')) STORED,
    email_lower  text GENERATED ALWAYS AS (lower(email)) STORED,
    PRIMARY KEY (clinic_id, id),
    CONSTRAINT patients_preferred_provider_fk FOREIGN KEY (clinic_id, preferred_provider_id)
        REFERENCES users (clinic_id, id),
    CONSTRAINT patients_responsible_party_fk FOREIGN KEY (clinic_id, responsible_party_id)
        REFERENCES patients (clinic_id, id),
    CONSTRAINT patients_not_own_responsible_party CHECK (responsible_party_id <> id)
);
-- The default list order, and keyset pagination over it.
CREATE INDEX patients_by_name ON patients (clinic_id, lower(last_name), lower(first_name), id);
-- Typo-tolerant name search and digit/email matching; used through patient_search().
CREATE INDEX patients_search_name ON patients USING gin (clinic_id, search_name gin_trgm_ops);
CREATE INDEX patients_search_phone ON patients USING gin (clinic_id, phone_digits gin_trgm_ops);
CREATE INDEX patients_email ON patients (clinic_id, email_lower);
CREATE INDEX patients_dob ON patients (clinic_id, date_of_birth);

ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
ALTER TABLE patients FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON patients
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
CREATE POLICY search ON patients FOR SELECT TO molar_auth USING (true);
GRANT SELECT, INSERT, UPDATE ON patients TO molar_app;
GRANT SELECT ON patients TO molar_auth;

-- Search inside the caller's clinic. Under row-level security only leakproof operators
-- may use an index, and pg_trgm's are not; so this function, owned by a role whose
-- policy admits it, takes the clinic from the transaction's setting (never from an
-- argument) and is exactly as tight as the policy. Returns ids and a score.
CREATE FUNCTION patient_search(
    q text, include_archived boolean, after_score real, after_id uuid, lim integer
) RETURNS TABLE (id uuid, score real)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
SET pg_trgm.similarity_threshold = 0.2
SET pg_trgm.word_similarity_threshold = 0.5
AS $$
DECLARE
    c uuid := nullif(current_setting('app.clinic_id', true), '')::uuid;
    needle text := lower(btrim(q));
    digits text := regexp_replace(q, '[^0-9]', '', 'g');
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
    ELSE
        -- Candidates come from the trigram index; the score adds, to trigram similarity,
        -- the share of query words that match a name word by prefix or within a small
        -- edit distance (so "Jonh Smiht" ranks John Smith first).
        RETURN QUERY
            SELECT s.id, s.score FROM (
                SELECT p.id,
                       (greatest(similarity(p.search_name, needle),
                                 word_similarity(needle, p.search_name))
                        + (SELECT count(*) FROM unnest(regexp_split_to_array(needle, '\s+')) qw
                           WHERE EXISTS (
                               SELECT 1 FROM unnest(regexp_split_to_array(p.search_name, '\s+')) nw
                               WHERE nw LIKE qw || '%'
                                  OR (length(qw) > 3 AND levenshtein(qw, nw) <= 2)
                                  OR (length(qw) BETWEEN 2 AND 3 AND levenshtein(qw, nw) <= 1 AND length(nw) <= 4)))::real
                          / greatest(cardinality(regexp_split_to_array(needle, '\s+')), 1)
                       )::real AS score
                FROM patients p
                WHERE p.clinic_id = c
                  AND (p.search_name % needle OR needle <% p.search_name
                       OR p.search_name LIKE '%' || needle || '%')
                  AND (include_archived OR p.archived_at IS NULL)
            ) s
            WHERE after_id IS NULL OR (s.score, s.id) < (after_score, after_id)
            ORDER BY s.score DESC, s.id DESC LIMIT lim;
    END IF;
END
$$;
ALTER FUNCTION patient_search(text, boolean, real, uuid, integer) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION patient_search(text, boolean, real, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION patient_search(text, boolean, real, uuid, integer) TO molar_app;

-- Odontogram entries: stored with the tooth in FDI notation; voided, never deleted.
CREATE TABLE chart_entries (
    clinic_id    uuid        NOT NULL,
    id           uuid        NOT NULL,
    patient_id   uuid        NOT NULL,
    tooth        smallint    NOT NULL CHECK (tooth BETWEEN 11 AND 85),
    surfaces     text[]      NOT NULL DEFAULT '{}',
    condition    text        NOT NULL,
    note         text        CHECK (length(note) <= 2000),
    recorded_by  uuid        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    voided_at    timestamptz,
    voided_by    uuid,
    void_reason  text        CHECK (length(void_reason) <= 500),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, recorded_by) REFERENCES users (clinic_id, id),
    CHECK ((voided_at IS NULL) = (voided_by IS NULL) AND (voided_at IS NULL) = (void_reason IS NULL))
);
CREATE INDEX chart_entries_patient ON chart_entries (clinic_id, patient_id, recorded_at, id);
ALTER TABLE chart_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE chart_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON chart_entries
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT ON chart_entries TO molar_app;
-- Only the void columns may change, and only once.
GRANT UPDATE (voided_at, voided_by, void_reason) ON chart_entries TO molar_app;
CREATE FUNCTION chart_entries_void_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.voided_at IS NOT NULL THEN
        RAISE EXCEPTION 'chart entry % is already voided', OLD.id USING ERRCODE = 'check_violation',
            CONSTRAINT = 'chart_entries_void_once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER chart_entries_void_once BEFORE UPDATE ON chart_entries
    FOR EACH ROW EXECUTE FUNCTION chart_entries_void_once();

-- Clinical notes: a signed note is immutable; corrections are signed addenda.
CREATE TABLE clinical_notes (
    clinic_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    patient_id  uuid        NOT NULL,
    author_id   uuid        NOT NULL,
    body        text        NOT NULL CHECK (length(body) BETWEEN 1 AND 20000),
    addendum_to uuid,
    signed_at   timestamptz,
    signed_by   uuid,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, author_id) REFERENCES users (clinic_id, id),
    FOREIGN KEY (clinic_id, signed_by) REFERENCES users (clinic_id, id),
    FOREIGN KEY (clinic_id, addendum_to) REFERENCES clinical_notes (clinic_id, id),
    CHECK ((signed_at IS NULL) = (signed_by IS NULL))
);
CREATE INDEX clinical_notes_patient ON clinical_notes (clinic_id, patient_id, created_at, id);
ALTER TABLE clinical_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE clinical_notes FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON clinical_notes
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, UPDATE ON clinical_notes TO molar_app;
CREATE FUNCTION clinical_notes_signed_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.signed_at IS NOT NULL THEN
        RAISE EXCEPTION 'clinical note % is signed and cannot change', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'clinical_notes_signed_immutable';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER clinical_notes_signed_immutable BEFORE UPDATE ON clinical_notes
    FOR EACH ROW EXECUTE FUNCTION clinical_notes_signed_immutable();

-- Periodontal charts: one exam with its measurements; attachment loss is computed.
CREATE TABLE perio_exams (
    clinic_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    patient_id  uuid        NOT NULL,
    examiner_id uuid        NOT NULL,
    examined_at timestamptz NOT NULL DEFAULT now(),
    note        text        CHECK (length(note) <= 2000),
    teeth       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, examiner_id) REFERENCES users (clinic_id, id)
);
CREATE INDEX perio_exams_patient ON perio_exams (clinic_id, patient_id, examined_at, id);
ALTER TABLE perio_exams ENABLE ROW LEVEL SECURITY;
ALTER TABLE perio_exams FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON perio_exams
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT ON perio_exams TO molar_app;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
