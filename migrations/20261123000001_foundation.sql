-- Foundation: the database roles the server runs as, and the clinics table (the tenant root).
--
-- Roles are cluster-wide, so several databases (tests, staging) may migrate at once:
-- creating them tolerates both "already exists" and the unique-index race.
DO $$
BEGIN
    CREATE ROLE molar_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- Owns the SECURITY DEFINER functions that look one identity up across clinics (login,
-- refresh). Its own policies admit it; the server's role is never a member of it.
DO $$
BEGIN
    CREATE ROLE molar_auth NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO molar_app, molar_auth;
GRANT SELECT ON _sqlx_migrations TO molar_app;

CREATE TABLE clinics (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    timezone    text        NOT NULL,
    currency    char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    phone       text        CHECK (length(phone) <= 40),
    address     jsonb,
    settings    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    version     integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Fail closed: without app.clinic_id set in the transaction, no row is visible or writable.
ALTER TABLE clinics ENABLE ROW LEVEL SECURITY;
ALTER TABLE clinics FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON clinics
    USING (id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));

GRANT SELECT, INSERT, UPDATE ON clinics TO molar_app;
