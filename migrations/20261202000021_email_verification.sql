-- Verified email addresses.
--
-- A new account (a clinic's first owner, or staff added by an owner or admin) starts
-- unverified, with `email_verify_by` = its creation + EMAIL_VERIFICATION_GRACE_HOURS. Until
-- then it signs in as usual; afterwards it signs in only once the address is verified by a
-- link sent to it. Accounts from before verification existed have neither time set: they
-- are not verified (`email_verified` is false) but keep signing in.
--
-- A changed address waits in `pending_email` and replaces the old one only when the link
-- sent to it is used: the old address signs in meanwhile.
--
-- Addresses are unique across clinics (user_logins). So that nobody can hold somebody
-- else's address by registering it, an unverified account holds its address only until
-- its `email_verify_by`: afterwards another account may take the address, and the
-- unverified one no longer signs in with it. A verified address is held for good.

GRANT CREATE ON SCHEMA public TO molar_auth;

ALTER TABLE users
    ADD COLUMN email_verified_at timestamptz,
    ADD COLUMN email_verify_by   timestamptz,
    ADD COLUMN pending_email     text CHECK (length(pending_email) <= 254),
    ADD CONSTRAINT users_verified_not_pending_deadline
        CHECK (email_verified_at IS NULL OR email_verify_by IS NULL);

-- NULL: held for good (verified, or an account from before verification).
ALTER TABLE user_logins ADD COLUMN held_until timestamptz;
GRANT DELETE ON user_logins TO molar_auth;

-- Takes an address for a user: a free address, or one whose unverified holder's time ran
-- out (that account then no longer signs in with it); otherwise the unique violation the
-- server answers 409 for.
CREATE OR REPLACE FUNCTION users_sync_login() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF lower(NEW.email) = lower(OLD.email)
           AND NEW.email_verify_by IS NOT DISTINCT FROM OLD.email_verify_by THEN
            RETURN NEW;
        END IF;
        DELETE FROM user_logins WHERE clinic_id = NEW.clinic_id AND user_id = NEW.id;
    END IF;
    INSERT INTO user_logins AS l (email_normalized, clinic_id, user_id, held_until)
    VALUES (lower(NEW.email), NEW.clinic_id, NEW.id, NEW.email_verify_by)
    ON CONFLICT (email_normalized) DO UPDATE
        SET clinic_id = EXCLUDED.clinic_id, user_id = EXCLUDED.user_id,
            held_until = EXCLUDED.held_until
        WHERE l.held_until < now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the email address is in use'
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'user_logins_pkey';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER users_sync_login ON users;
CREATE TRIGGER users_sync_login AFTER INSERT OR UPDATE OF email, email_verify_by ON users
    FOR EACH ROW EXECUTE FUNCTION users_sync_login();

-- Sign-in now also says until when an unverified account may sign in.
DROP FUNCTION auth_find_login(text);
CREATE FUNCTION auth_find_login(p_email text)
RETURNS TABLE (clinic_id uuid, user_id uuid, password_hash text, active boolean,
               verify_by timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT u.clinic_id, u.id, u.password_hash, u.active, u.email_verify_by
    FROM user_logins l
    JOIN users u ON u.clinic_id = l.clinic_id AND u.id = l.user_id
    WHERE l.email_normalized = lower(p_email)
$$;
ALTER FUNCTION auth_find_login(text) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_find_login(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_find_login(text) TO molar_app;

-- Whether an address is held (a new account or a changed address would be refused).
CREATE OR REPLACE FUNCTION auth_email_taken(p_email text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM user_logins
                   WHERE email_normalized = lower(p_email)
                     AND (held_until IS NULL OR held_until >= now()))
$$;

-- Verification links are one-use tokens like reset links, for the address they were sent to.
ALTER TABLE auth_tokens ADD COLUMN email text CHECK (length(email) <= 254);
ALTER TABLE auth_tokens DROP CONSTRAINT auth_tokens_purpose_check;
ALTER TABLE auth_tokens ADD CONSTRAINT auth_tokens_purpose_check
    CHECK (purpose IN ('password_reset', 'verify_email'));
ALTER TABLE auth_tokens ADD CONSTRAINT auth_tokens_email_for_verification
    CHECK ((purpose = 'verify_email') = (email IS NOT NULL));

-- peek/use return the address too: a link is good only for the address it was sent to.
DROP FUNCTION auth_token_peek(text, bytea);
CREATE FUNCTION auth_token_peek(p_purpose text, p_hash bytea)
RETURNS TABLE (clinic_id uuid, user_id uuid, email text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.clinic_id, t.user_id, t.email FROM auth_tokens t
    WHERE t.token_hash = p_hash AND t.purpose = p_purpose
      AND t.used_at IS NULL AND t.expires_at > now()
$$;
ALTER FUNCTION auth_token_peek(text, bytea) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_token_peek(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_token_peek(text, bytea) TO molar_app;

DROP FUNCTION auth_token_use(text, bytea);
CREATE FUNCTION auth_token_use(p_purpose text, p_hash bytea)
RETURNS TABLE (clinic_id uuid, user_id uuid, email text)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE auth_tokens t SET used_at = now()
    WHERE t.token_hash = p_hash AND t.purpose = p_purpose
      AND t.used_at IS NULL AND t.expires_at > now()
    RETURNING t.clinic_id, t.user_id, t.email
$$;
ALTER FUNCTION auth_token_use(text, bytea) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_token_use(text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_token_use(text, bytea) TO molar_app;
REVOKE CREATE ON SCHEMA public FROM molar_auth;
