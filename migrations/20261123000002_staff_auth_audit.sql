-- Staff, sign-in and the audit trail.

-- The migrating role must be able to hand functions to molar_auth, and a new owner needs
-- CREATE on the schema at that moment (revoked again at the end of this migration).
GRANT molar_auth TO CURRENT_USER;
GRANT CREATE ON SCHEMA public TO molar_auth;

CREATE TABLE users (
    clinic_id     uuid        NOT NULL REFERENCES clinics (id),
    id            uuid        NOT NULL,
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    full_name     text        NOT NULL CHECK (length(full_name) BETWEEN 1 AND 200),
    role          text        NOT NULL CHECK (role IN ('owner', 'admin', 'dentist', 'hygienist',
                                                       'assistant', 'receptionist', 'billing')),
    is_provider   boolean     NOT NULL DEFAULT false,
    active        boolean     NOT NULL DEFAULT true,
    password_hash text        NOT NULL,
    -- Bumped whenever a change must cut existing access tokens off at once
    -- (deactivation, role change, password change).
    auth_version  integer     NOT NULL DEFAULT 1,
    version       integer     NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, id)
);
CREATE INDEX users_clinic_name ON users (clinic_id, full_name, id);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON users
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
-- The sign-in lookup (owned by molar_auth) finds one user by email across clinics.
CREATE POLICY auth_lookup ON users FOR SELECT TO molar_auth USING (true);
GRANT SELECT, INSERT, UPDATE ON users TO molar_app;
GRANT SELECT ON users TO molar_auth;

-- Emails are unique across the system. This small global table maps an email to its
-- user (a reference table when distributed); the server's role cannot read it: it is
-- written by a trigger and read only by the sign-in lookup.
CREATE TABLE user_logins (
    email_normalized text PRIMARY KEY,
    clinic_id        uuid NOT NULL,
    user_id          uuid NOT NULL,
    UNIQUE (clinic_id, user_id)
);
ALTER TABLE user_logins ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_logins FORCE ROW LEVEL SECURITY;
CREATE POLICY auth_only ON user_logins TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON user_logins TO molar_auth;

CREATE FUNCTION users_sync_login() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO user_logins (email_normalized, clinic_id, user_id)
        VALUES (lower(NEW.email), NEW.clinic_id, NEW.id);
    ELSIF lower(NEW.email) <> lower(OLD.email) THEN
        UPDATE user_logins SET email_normalized = lower(NEW.email)
        WHERE clinic_id = NEW.clinic_id AND user_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;
ALTER FUNCTION users_sync_login() OWNER TO molar_auth;
REVOKE ALL ON FUNCTION users_sync_login() FROM PUBLIC;
CREATE TRIGGER users_sync_login AFTER INSERT OR UPDATE OF email ON users
    FOR EACH ROW EXECUTE FUNCTION users_sync_login();

-- Sign-in: exactly the one identity asked for, or nothing.
CREATE FUNCTION auth_find_login(p_email text)
RETURNS TABLE (clinic_id uuid, user_id uuid, password_hash text, active boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT u.clinic_id, u.id, u.password_hash, u.active
    FROM user_logins l
    JOIN users u ON u.clinic_id = l.clinic_id AND u.id = l.user_id
    WHERE l.email_normalized = lower(p_email)
$$;
ALTER FUNCTION auth_find_login(text) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_find_login(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_find_login(text) TO molar_app;

-- Whether an email is free, for a clear 409 before a clinic is registered.
CREATE FUNCTION auth_email_taken(p_email text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM user_logins WHERE email_normalized = lower(p_email))
$$;
ALTER FUNCTION auth_email_taken(text) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_email_taken(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_email_taken(text) TO molar_app;

-- Refresh tokens: the opaque value carries its clinic and id; only a hash of its secret
-- is stored. Tokens of one sign-in form a family; reuse of a rotated one revokes it.
CREATE TABLE refresh_tokens (
    clinic_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    family_id         uuid        NOT NULL,
    user_id           uuid        NOT NULL,
    secret_hash       bytea       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    family_expires_at timestamptz NOT NULL,
    idle_expires_at   timestamptz NOT NULL,
    rotated_at        timestamptz,
    revoked_at        timestamptz,
    PRIMARY KEY (clinic_id, id),
    FOREIGN KEY (clinic_id, user_id) REFERENCES users (clinic_id, id)
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (clinic_id, family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (clinic_id, user_id) WHERE revoked_at IS NULL;
ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON refresh_tokens
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, UPDATE ON refresh_tokens TO molar_app;

-- Idempotency keys for creating POSTs (scoped to the user, kept 24 hours).
CREATE TABLE idempotency_keys (
    clinic_id     uuid        NOT NULL,
    user_id       uuid        NOT NULL,
    key           text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea       NOT NULL,
    status        smallint,
    response      jsonb,
    location      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, user_id, key)
);
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON idempotency_keys
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO molar_app;

-- The audit trail: append-only for the server (INSERT and SELECT only), partitioned by
-- month so that retention drops whole partitions.
CREATE TABLE audit_events (
    clinic_id     uuid        NOT NULL,
    id            uuid        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    user_id       uuid,
    action        text        NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    resource_type text        NOT NULL,
    resource_id   uuid,
    patient_id    uuid,
    request_id    text,
    ip            inet,
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    details       jsonb,
    PRIMARY KEY (clinic_id, at, id)
) PARTITION BY RANGE (at);
CREATE INDEX audit_events_patient ON audit_events (clinic_id, patient_id, at) WHERE patient_id IS NOT NULL;
CREATE INDEX audit_events_user ON audit_events (clinic_id, user_id, at);
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON audit_events
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid))
    WITH CHECK (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
CREATE POLICY sealer ON audit_events FOR SELECT TO molar_auth USING (true);
GRANT SELECT, INSERT ON audit_events TO molar_app;
GRANT SELECT ON audit_events TO molar_auth;

-- Rows that arrive for a month without a partition land here rather than failing.
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

-- Creates the monthly partitions from this month to `months_ahead` months ahead.
-- Runs with the owner's rights so the server can keep partitions ahead of time.
CREATE FUNCTION audit_ensure_partitions(months_ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    created integer := 0;
    name text;
BEGIN
    FOR i IN 0 .. greatest(least(months_ahead, 24), 0) LOOP
        name := format('audit_events_%s', to_char(m, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                name, (m::timestamp AT TIME ZONE 'UTC'),
                ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        m := (m + interval '1 month')::date;
    END LOOP;
    RETURN created;
END
$$;
REVOKE ALL ON FUNCTION audit_ensure_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_ensure_partitions(integer) TO molar_app;
SELECT audit_ensure_partitions(3);

-- Seals: each covers the events of one clinic from just after the previous seal up to
-- a cut-off, hashing them in (at, id) order with the previous seal's hash. An edit,
-- deletion or insertion inside a sealed range breaks the chain. Append-only too.
CREATE TABLE audit_seals (
    clinic_id      uuid        NOT NULL,
    seq            bigint      NOT NULL CHECK (seq > 0),
    sealed_at      timestamptz NOT NULL DEFAULT now(),
    from_at        timestamptz,
    from_id        uuid,
    to_at          timestamptz NOT NULL,
    to_id          uuid        NOT NULL,
    event_count    integer     NOT NULL,
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL,
    PRIMARY KEY (clinic_id, seq)
);
ALTER TABLE audit_seals ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_seals FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON audit_seals
    USING (clinic_id = (SELECT nullif(current_setting('app.clinic_id', true), '')::uuid));
CREATE POLICY sealer ON audit_seals TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT ON audit_seals TO molar_app;
GRANT SELECT, INSERT ON audit_seals TO molar_auth;

-- The canonical digest of one event.
CREATE FUNCTION audit_event_digest(e audit_events) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path = public, pg_temp AS $$
    SELECT sha256(convert_to(concat_ws('|',
        e.clinic_id, e.id, to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
        coalesce(e.user_id::text, ''), e.action, e.resource_type,
        coalesce(e.resource_id::text, ''), coalesce(e.patient_id::text, ''),
        coalesce(e.request_id, ''), coalesce(host(e.ip), ''), e.outcome,
        coalesce(e.details::text, '')), 'UTF8'))
$$;

-- Seals every clinic's events older than `settle` (longer than any transaction may run,
-- so no event can still commit into a sealed range). One instance seals at a time.
CREATE FUNCTION audit_seal(settle interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    c uuid;
    last audit_seals;
    cutoff timestamptz := now() - settle;
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
    FOR c IN SELECT DISTINCT ae.clinic_id FROM audit_events ae WHERE ae.at < cutoff LOOP
        SELECT * INTO last FROM audit_seals s WHERE s.clinic_id = c ORDER BY seq DESC LIMIT 1;
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
    RETURN sealed;
END
$$;
ALTER FUNCTION audit_seal(interval) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION audit_seal(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_seal(interval) TO molar_app;

-- Recomputes every seal; returns the first broken link of each clinic that has one.
CREATE FUNCTION audit_verify()
RETURNS TABLE (clinic_id uuid, seq bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    s audit_seals;
    prev audit_seals;
    c uuid;
    h bytea;
    n integer;
    e audit_events;
BEGIN
    FOR c IN SELECT DISTINCT x.clinic_id FROM audit_seals x LOOP
        prev := NULL;
        FOR s IN SELECT * FROM audit_seals x WHERE x.clinic_id = c ORDER BY x.seq LOOP
            IF s.seq <> coalesce(prev.seq, 0) + 1 THEN
                clinic_id := c; seq := s.seq; problem := 'a seal is missing before this one';
                RETURN NEXT; EXIT;
            END IF;
            IF s.prev_hash <> coalesce(prev.hash, '\x'::bytea) THEN
                clinic_id := c; seq := s.seq; problem := 'the seal does not chain to the previous seal';
                RETURN NEXT; EXIT;
            END IF;
            h := s.prev_hash;
            n := 0;
            FOR e IN
                SELECT * FROM audit_events ae
                WHERE ae.clinic_id = c
                  AND (prev.seq IS NULL OR (ae.at, ae.id) > (prev.to_at, prev.to_id))
                  AND (ae.at, ae.id) <= (s.to_at, s.to_id)
                ORDER BY ae.at, ae.id
            LOOP
                h := sha256(h || audit_event_digest(e));
                n := n + 1;
            END LOOP;
            IF n <> s.event_count THEN
                clinic_id := c; seq := s.seq;
                problem := format('the sealed range holds %s events, the seal counted %s', n, s.event_count);
                RETURN NEXT; EXIT;
            END IF;
            IF h <> s.hash THEN
                clinic_id := c; seq := s.seq; problem := 'an event in the sealed range was changed';
                RETURN NEXT; EXIT;
            END IF;
            prev := s;
        END LOOP;
    END LOOP;
END
$$;
ALTER FUNCTION audit_verify() OWNER TO molar_auth;
REVOKE ALL ON FUNCTION audit_verify() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_verify() TO molar_app;

-- Failed sign-ins for unknown emails have no clinic: a global, insert-only security log.
CREATE TABLE security_events (
    id          uuid        PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text        NOT NULL,
    email_hash  text,
    ip          inet,
    request_id  text,
    details     jsonb
);
ALTER TABLE security_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE security_events FORCE ROW LEVEL SECURITY;
CREATE POLICY insert_only ON security_events FOR INSERT TO molar_app WITH CHECK (true);
GRANT INSERT ON security_events TO molar_app;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
