-- An access token ends with its sign-in. Access tokens now carry the refresh-token family
-- of the sign-in that issued them (the `sid` claim), and the session check that rides
-- with BEGIN refuses a token whose family is revoked: logout, an exchanged refresh token
-- presented again, a password change or a deactivation cut it off on the next request,
-- not when it expires.
--
-- A new overload with the family as a fifth argument. The four-argument function stays,
-- unchanged, so that servers of the previous release keep working against this schema
-- during a rolling deploy. A NULL family (a token issued before `sid` existed) skips the
-- family check; such tokens expire within ACCESS_TOKEN_EXPIRE_MINUTES.

GRANT CREATE ON SCHEMA public TO molar_auth;

-- The check runs before BEGIN, with no clinic set, so the tenant policy shows it no
-- refresh token: the function, running as molar_auth, reads them through a policy for
-- that role, as the session check and the sign-in lookup already read users.
CREATE POLICY auth_session_check ON refresh_tokens FOR SELECT TO molar_auth USING (true);
GRANT SELECT ON refresh_tokens TO molar_auth;

CREATE FUNCTION auth_check_session(p_clinic uuid, p_user uuid, p_version integer, p_role text,
                                   p_family uuid)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM 1 FROM users u
    WHERE u.clinic_id = p_clinic AND u.id = p_user
      AND u.active AND u.auth_version = p_version AND u.role = p_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the session is no longer valid' USING ERRCODE = 'ML401';
    END IF;
    IF p_family IS NOT NULL THEN
        -- A family is revoked all at once: every token of it gets revoked_at. So while the
        -- sign-in lives, the first token the index (refresh_tokens_family) finds answers.
        PERFORM 1 FROM refresh_tokens rt
        WHERE rt.clinic_id = p_clinic AND rt.family_id = p_family AND rt.user_id = p_user
          AND rt.revoked_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the session is no longer valid' USING ERRCODE = 'ML401';
        END IF;
    END IF;
END
$$;
ALTER FUNCTION auth_check_session(uuid, uuid, integer, text, uuid) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_check_session(uuid, uuid, integer, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_check_session(uuid, uuid, integer, text, uuid) TO molar_app;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
