-- Medical-record documents: x-rays, photos, consent forms, referral and lab letters.
--
-- The content lives encrypted in the document store (local files or S3), one object per
-- document under the clinic's folder; this table holds what describes it and its data key,
-- wrapped by the key-encryption key named in `key_id`. A row is written only after its
-- content is complete in the store, so no row points at missing or partial content.
--
-- The server's role inserts rows and may change only: the deletion columns (once), the
-- purge mark (once, after deletion) and the wrapped key (re-wrapping under a new key).
-- What a document says is never changed.

CREATE TABLE documents (
    clinic_id     uuid        NOT NULL REFERENCES clinics (id),
    id            uuid        NOT NULL,
    patient_id    uuid        NOT NULL,
    kind          text        NOT NULL
        CHECK (kind IN ('xray', 'photo', 'consent', 'referral', 'lab', 'other')),
    title         text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    content_type  text        NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png',
                                  'application/pdf', 'application/dicom', 'image/tiff')),
    size_bytes    bigint      NOT NULL CHECK (size_bytes > 0),
    sha256        text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    taken_on      date,
    key_id        text        NOT NULL CHECK (key_id ~ '^k[0-9a-f]{16}$'),
    wrapped_key   bytea       NOT NULL CHECK (length(wrapped_key) = 72),
    created_by    uuid        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    deleted_by    uuid,
    delete_reason text        CHECK (length(delete_reason) BETWEEN 1 AND 500),
    purged_at     timestamptz,
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, created_by) REFERENCES users (clinic_id, id),
    FOREIGN KEY (clinic_id, deleted_by) REFERENCES users (clinic_id, id),
    CONSTRAINT documents_deleted_together CHECK (
        (deleted_at IS NULL) = (deleted_by IS NULL)
        AND (deleted_at IS NULL) = (delete_reason IS NULL)),
    CONSTRAINT documents_purged_after_deletion CHECK (purged_at IS NULL OR deleted_at IS NOT NULL)
);
-- A patient's documents, newest first (the list's order and its cursor).
CREATE INDEX documents_patient ON documents (clinic_id, patient_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
-- Purging: deleted documents whose content is still kept.
CREATE INDEX documents_to_purge ON documents (clinic_id, deleted_at)
    WHERE deleted_at IS NOT NULL AND purged_at IS NULL;
-- Which keys are in use (re-wrapping, the start-up check): documents with content, by key.
CREATE INDEX documents_key ON documents (key_id) WHERE purged_at IS NULL;

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON documents
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));

GRANT SELECT, INSERT ON documents TO molar_app;
GRANT UPDATE (deleted_at, deleted_by, delete_reason, purged_at, key_id, wrapped_key)
    ON documents TO molar_app;

-- Deletion is one-way and happens once; the purge mark is set once; a document is never
-- removed. Holds for every role, the owner's included.
CREATE FUNCTION documents_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'documents are kept; delete hides them and purge removes their content'
            USING ERRCODE = 'insufficient_privilege', CONSTRAINT = 'documents_kept';
    END IF;
    IF (NEW.clinic_id, NEW.id, NEW.patient_id, NEW.kind, NEW.title, NEW.content_type,
        NEW.size_bytes, NEW.sha256, NEW.taken_on, NEW.created_by, NEW.created_at)
       IS DISTINCT FROM
       (OLD.clinic_id, OLD.id, OLD.patient_id, OLD.kind, OLD.title, OLD.content_type,
        OLD.size_bytes, OLD.sha256, OLD.taken_on, OLD.created_by, OLD.created_at) THEN
        RAISE EXCEPTION 'a document''s description and content are not changed'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'documents_fixed';
    END IF;
    IF OLD.deleted_at IS NOT NULL
       AND (NEW.deleted_at, NEW.deleted_by, NEW.delete_reason)
           IS DISTINCT FROM (OLD.deleted_at, OLD.deleted_by, OLD.delete_reason) THEN
        RAISE EXCEPTION 'document % is deleted already', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'documents_deleted_once';
    END IF;
    IF OLD.purged_at IS NOT NULL AND NEW.purged_at IS DISTINCT FROM OLD.purged_at THEN
        RAISE EXCEPTION 'document % is purged already', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'documents_purged_once';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER documents_guard BEFORE UPDATE OR DELETE ON documents
    FOR EACH ROW EXECUTE FUNCTION documents_guard();

-- Maintenance that spans clinics (re-wrapping, purging, the start-up check) learns which
-- clinics hold documents and under which keys through these two functions; the rows
-- themselves are then read clinic by clinic under row-level security.
GRANT CREATE ON SCHEMA public TO molar_auth;
CREATE POLICY document_maintenance ON documents FOR SELECT TO molar_auth USING (true);
GRANT SELECT ON documents TO molar_auth;

-- Both skip through an index from one distinct value to the next, so they cost one index
-- probe per clinic or key, not a scan of every document.
CREATE FUNCTION document_clinics() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH RECURSIVE c (clinic_id) AS (
        (SELECT clinic_id FROM documents ORDER BY clinic_id LIMIT 1)
        UNION ALL
        SELECT (SELECT d.clinic_id FROM documents d WHERE d.clinic_id > c.clinic_id
                ORDER BY d.clinic_id LIMIT 1)
        FROM c WHERE c.clinic_id IS NOT NULL
    )
    SELECT clinic_id FROM c WHERE clinic_id IS NOT NULL
$$;
ALTER FUNCTION document_clinics() OWNER TO molar_auth;
REVOKE ALL ON FUNCTION document_clinics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION document_clinics() TO molar_app;

CREATE FUNCTION document_key_ids() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH RECURSIVE k (key_id) AS (
        (SELECT key_id FROM documents WHERE purged_at IS NULL ORDER BY key_id LIMIT 1)
        UNION ALL
        SELECT (SELECT d.key_id FROM documents d WHERE d.purged_at IS NULL AND d.key_id > k.key_id
                ORDER BY d.key_id LIMIT 1)
        FROM k WHERE k.key_id IS NOT NULL
    )
    SELECT key_id FROM k WHERE key_id IS NOT NULL
$$;
ALTER FUNCTION document_key_ids() OWNER TO molar_auth;
REVOKE ALL ON FUNCTION document_key_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION document_key_ids() TO molar_app;
REVOKE CREATE ON SCHEMA public FROM molar_auth;
