-- app_clinic_id(): the clinic of the current transaction, from the transaction-local
-- setting app.clinic_id, or NULL when none is set (an unset setting reads as '' once a
-- transaction that set it has ended, hence nullif). NULL matches no row, so whatever uses
-- it stays closed by default.
--
-- From now on:
--   * new row-level security policies are written
--         USING (clinic_id = (SELECT app_clinic_id()))
--         WITH CHECK (clinic_id = (SELECT app_clinic_id()))
--     The sub-select makes it an init plan, evaluated once per statement rather than once
--     per row, and leaves `clinic_id = $param`, which is leakproof, so indexes still apply;
--   * new SECURITY DEFINER functions take their clinic from app_clinic_id() instead of
--     repeating nullif(current_setting('app.clinic_id', true), '')::uuid, never from an
--     argument.
-- Existing policies and functions keep the expression spelled out; they mean the same.
--
-- Not SECURITY DEFINER, and no SET clause (it reads nothing but the setting, resolved in
-- pg_catalog whatever the caller's search_path), so PostgreSQL can inline it. Owned by the
-- owning role like the other plain helpers. EXECUTE only for the roles that evaluate
-- tenant policies: the server's (molar_app) and the definer functions' (molar_auth); the
-- owner keeps it as owner.
CREATE FUNCTION app_clinic_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT nullif(current_setting('app.clinic_id', true), '')::uuid
$$;

REVOKE ALL ON FUNCTION app_clinic_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_clinic_id() TO molar_app, molar_auth;
