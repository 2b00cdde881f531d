-- The transactional outbox, and one-use tokens for resetting a password.
--
-- Outbox: what must reach the outside world because of a change (an email now) is written
-- in the transaction that makes the change, and delivered afterwards by a worker in every
-- instance. A worker leases due rows (FOR UPDATE SKIP LOCKED, then pushes their
-- available_at past the lease) in a short transaction, delivers them holding no lock and
-- no connection, and records each outcome in another short transaction. A worker that dies
-- mid-delivery leaves its rows to be leased again when the lease ends.

CREATE TABLE outbox (
    clinic_id    uuid        NOT NULL REFERENCES clinics (id),
    id           uuid        NOT NULL,
    topic        text        NOT NULL CHECK (topic IN ('email')),
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- After this no attempt is made (a reset link's message is pointless once it expired).
    give_up_at   timestamptz NOT NULL DEFAULT now() + interval '1 day',
    last_error   text        CHECK (length(last_error) <= 1000),
    delivered_at timestamptz,
    failed_at    timestamptz,
    PRIMARY KEY (clinic_id, id)
);
-- What is due, oldest first.
CREATE INDEX outbox_due ON outbox (available_at) WHERE delivered_at IS NULL AND failed_at IS NULL;

ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON outbox
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT ON outbox TO molar_app;

-- Password-reset tokens, stored only as SHA-256 hashes; used once, within their time.
CREATE TABLE auth_tokens (
    token_hash bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    purpose    text        NOT NULL CHECK (purpose IN ('password_reset')),
    clinic_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    FOREIGN KEY (clinic_id, user_id) REFERENCES users (clinic_id, id)
);
CREATE INDEX auth_tokens_user ON auth_tokens (clinic_id, user_id) WHERE used_at IS NULL;
ALTER TABLE auth_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON auth_tokens
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT ON auth_tokens TO molar_app;
-- A reset or a password change ends the user's other links.
GRANT UPDATE (used_at) ON auth_tokens TO molar_app;

-- The cross-clinic steps, as definer functions: a token arrives without its clinic, and the
-- outbox worker serves every clinic.
GRANT CREATE ON SCHEMA public TO molar_auth;
CREATE POLICY auth_lookup ON auth_tokens TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE (used_at) ON auth_tokens TO molar_auth;
CREATE POLICY outbox_worker ON outbox TO molar_auth USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON outbox TO molar_auth;

-- The clinic and user of a live token (not used, not expired), without using it.
CREATE FUNCTION auth_token_peek(p_purpose text, p_hash bytea)
RETURNS TABLE (clinic_id uuid, user_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.clinic_id, t.user_id FROM auth_tokens t
    WHERE t.token_hash = p_hash AND t.purpose = p_purpose
      AND t.used_at IS NULL AND t.expires_at > now()
$$;
ALTER FUNCTION auth_token_peek(text, bytea) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_token_peek(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_token_peek(text, bytea) TO molar_app;

-- Uses a live token once: of two transactions using it, one gets its row.
CREATE FUNCTION auth_token_use(p_purpose text, p_hash bytea)
RETURNS TABLE (clinic_id uuid, user_id uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE auth_tokens t SET used_at = now()
    WHERE t.token_hash = p_hash AND t.purpose = p_purpose
      AND t.used_at IS NULL AND t.expires_at > now()
    RETURNING t.clinic_id, t.user_id
$$;
ALTER FUNCTION auth_token_use(text, bytea) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_token_use(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_token_use(text, bytea) TO molar_app;

-- Leases up to p_limit due rows of the topics for p_lease: they are not due again until
-- it ends (or their outcome is recorded); rows another worker is leasing are skipped.
CREATE FUNCTION outbox_claim(p_topics text[], p_limit integer, p_lease interval)
RETURNS TABLE (clinic_id uuid, id uuid, topic text, payload jsonb, attempts integer, give_up_at timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH due AS (
        SELECT o.clinic_id, o.id FROM outbox o
        WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.available_at <= now()
          AND o.topic = ANY (p_topics)
        ORDER BY o.available_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox o SET available_at = now() + p_lease
    FROM due WHERE o.clinic_id = due.clinic_id AND o.id = due.id
    RETURNING o.clinic_id, o.id, o.topic, o.payload, o.attempts, o.give_up_at
$$;
ALTER FUNCTION outbox_claim(text[], integer, interval) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION outbox_claim(text[], integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_claim(text[], integer, interval) TO molar_app;

-- Records an attempt: delivered (the payload reduced to what it keeps afterwards), or
-- failed with the next attempt's time, or given up.
CREATE FUNCTION outbox_record(p_clinic uuid, p_id uuid, p_delivered boolean, p_error text,
                              p_next timestamptz, p_keep jsonb)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH changed AS (
        UPDATE outbox o SET
            attempts = o.attempts + 1,
            delivered_at = CASE WHEN p_delivered THEN now() END,
            failed_at = CASE WHEN NOT p_delivered AND p_next IS NULL THEN now() END,
            available_at = coalesce(p_next, o.available_at),
            last_error = left(p_error, 1000),
            payload = CASE WHEN p_delivered OR p_next IS NULL THEN coalesce(p_keep, o.payload)
                           ELSE o.payload END
        WHERE o.clinic_id = p_clinic AND o.id = p_id
        RETURNING 1
    )
    SELECT count(*)::integer FROM changed
$$;
ALTER FUNCTION outbox_record(uuid, uuid, boolean, text, timestamptz, jsonb) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION outbox_record(uuid, uuid, boolean, text, timestamptz, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox_record(uuid, uuid, boolean, text, timestamptz, jsonb) TO molar_app;
REVOKE CREATE ON SCHEMA public FROM molar_auth;
