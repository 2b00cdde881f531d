-- Restricted patients and break-glass access.
--
-- A patient may be `restricted` (staff, public figures): their clinical record (notes,
-- chart entries, periodontal exams, documents, and in the application procedures and
-- treatment plans) is open only to the users on their `care_team`, and to anyone with a
-- clinical role who "breaks the glass": states a reason and receives a grant that lasts
-- BREAK_GLASS_MINUTES. Demographics stay visible for scheduling.
--
-- Two layers. The application answers 404 on a hidden record before it reads anything;
-- below it, a RESTRICTIVE row-level security policy on the purely clinical tables hides
-- the rows of every patient app_hidden_patients() names, so a forgotten check shows
-- nothing rather than everything. Procedures and treatment plans keep no such policy:
-- billing (not a clinical role) invoices them for restricted patients too, so there the
-- application alone decides.

ALTER TABLE patients ADD COLUMN restricted boolean NOT NULL DEFAULT false;
-- User ids of this clinic, checked by the application (active users when set); bounded
-- so that a row stays small and the membership test cheap.
ALTER TABLE patients ADD COLUMN care_team uuid[] NOT NULL DEFAULT '{}'
    CONSTRAINT patients_care_team_size CHECK (cardinality(care_team) <= 50);
-- The few restricted patients of a clinic, for app_hidden_patients().
CREATE INDEX patients_restricted ON patients (clinic_id) WHERE restricted;

-- Grants are append-only: the server's role inserts and reads them, never changes or
-- removes one; an expired grant simply stops counting, and stays for review.
CREATE TABLE break_glass_grants (
    clinic_id  uuid        NOT NULL REFERENCES clinics (id),
    id         uuid        NOT NULL,
    patient_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    reason     text        NOT NULL CHECK (length(btrim(reason)) BETWEEN 1 AND 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    FOREIGN KEY (clinic_id, user_id) REFERENCES users (clinic_id, id),
    CONSTRAINT break_glass_grants_time_boxed
        CHECK (expires_at > created_at AND expires_at <= created_at + interval '24 hours')
);
-- Whether a user holds a live grant for a patient.
CREATE INDEX break_glass_grants_holder
    ON break_glass_grants (clinic_id, user_id, patient_id, expires_at);
-- The review list, newest first (its order and its cursor).
CREATE INDEX break_glass_grants_recent
    ON break_glass_grants (clinic_id, created_at DESC, id DESC);

ALTER TABLE break_glass_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE break_glass_grants FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON break_glass_grants
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT ON break_glass_grants TO molar_app;

-- app_user_id(): the signed-in user of the current transaction, from the transaction-local
-- setting app.user_id that the session check sets beside app.clinic_id for every request
-- (Db::session_tx); NULL when none is set. Inlinable like app_clinic_id().
CREATE FUNCTION app_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT nullif(current_setting('app.user_id', true), '')::uuid
$$;
REVOKE ALL ON FUNCTION app_user_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_user_id() TO molar_app;

-- app_hidden_patients(): the restricted patients of the transaction's clinic whose
-- clinical record the transaction may not see.
--   * With a user (every request): those the user is neither on the care team of nor
--     holds a live break-glass grant for.
--   * Without a user: every restricted patient (closed by default), unless the
--     transaction declares itself maintenance with app.maintenance = 'on' (document
--     purging and key re-wrapping, which handle content, not people): then none.
-- Runs as the caller (molar_app), under the clinic policies of patients and grants, so it
-- never reaches beyond the clinic. Policies call it as `(SELECT app_hidden_patients())`,
-- an init plan evaluated once per statement, not once per row; the `::uuid[]` cast makes
-- `<> ALL` compare with the array's elements rather than with a sub-query's rows.
CREATE FUNCTION app_hidden_patients() RETURNS uuid[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(p.id), '{}')
    FROM patients p
    WHERE p.clinic_id = app_clinic_id()
      AND p.restricted
      AND (CASE
               WHEN app_user_id() IS NULL
                   THEN current_setting('app.maintenance', true) IS DISTINCT FROM 'on'
               ELSE NOT (app_user_id() = ANY (p.care_team))
                    AND NOT EXISTS (
                        SELECT 1 FROM break_glass_grants g
                        WHERE g.clinic_id = p.clinic_id AND g.user_id = app_user_id()
                          AND g.patient_id = p.id AND g.expires_at > now())
           END)
$$;
REVOKE ALL ON FUNCTION app_hidden_patients() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_hidden_patients() TO molar_app;

-- The second layer, on the purely clinical tables, for the server's role only (the
-- definer functions' role, molar_auth, reads documents for maintenance by clinic and key,
-- never by patient). RESTRICTIVE: it narrows what clinic_isolation admits. For writes
-- too (the USING expression doubles as WITH CHECK): nobody adds to a record they may not
-- see.
CREATE POLICY restricted_record ON clinical_notes AS RESTRICTIVE TO molar_app
    USING (patient_id <> ALL ((SELECT app_hidden_patients())::uuid[]));
CREATE POLICY restricted_record ON chart_entries AS RESTRICTIVE TO molar_app
    USING (patient_id <> ALL ((SELECT app_hidden_patients())::uuid[]));
CREATE POLICY restricted_record ON perio_exams AS RESTRICTIVE TO molar_app
    USING (patient_id <> ALL ((SELECT app_hidden_patients())::uuid[]));
CREATE POLICY restricted_record ON documents AS RESTRICTIVE TO molar_app
    USING (patient_id <> ALL ((SELECT app_hidden_patients())::uuid[]));
