-- The session check rides in the same round trip as BEGIN and the clinic setting: the
-- server sends `SELECT auth_check_session(...); BEGIN; SELECT set_config(...)` as one
-- simple query. When the account is deactivated, its role changed or its credentials
-- rotated, the function raises ML401 before BEGIN runs, so the connection goes back to
-- the pool idle, not inside a failed transaction.

GRANT CREATE ON SCHEMA public TO molar_auth;

CREATE FUNCTION auth_check_session(p_clinic uuid, p_user uuid, p_version integer, p_role text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM 1 FROM users u
    WHERE u.clinic_id = p_clinic AND u.id = p_user
      AND u.active AND u.auth_version = p_version AND u.role = p_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the session is no longer valid' USING ERRCODE = 'ML401';
    END IF;
END
$$;
ALTER FUNCTION auth_check_session(uuid, uuid, integer, text) OWNER TO molar_auth;
REVOKE ALL ON FUNCTION auth_check_session(uuid, uuid, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_check_session(uuid, uuid, integer, text) TO molar_app;

REVOKE CREATE ON SCHEMA public FROM molar_auth;
