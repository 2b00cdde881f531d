-- Two-factor sign-in with TOTP (RFC 6238). The shared secret is kept sealed (encrypted with
-- a key derived from SECRET_KEY, bound to the clinic and user); `totp_last_step` is the
-- last time step a code was accepted for, so each code works once. Recovery codes are
-- kept as SHA-256 hashes and used once.
ALTER TABLE users ADD COLUMN totp_secret bytea;
ALTER TABLE users ADD COLUMN totp_pending bytea;
ALTER TABLE users ADD COLUMN totp_enabled_at timestamptz;
ALTER TABLE users ADD COLUMN totp_last_step bigint;
ALTER TABLE users ADD CONSTRAINT users_totp_enabled_with_secret
    CHECK ((totp_enabled_at IS NULL) = (totp_secret IS NULL));

CREATE TABLE mfa_recovery_codes (
    clinic_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    code_hash  bytea       NOT NULL CHECK (length(code_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz,
    PRIMARY KEY (clinic_id, user_id, code_hash),
    FOREIGN KEY (clinic_id, user_id) REFERENCES users (clinic_id, id)
);
ALTER TABLE mfa_recovery_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE mfa_recovery_codes FORCE ROW LEVEL SECURITY;
CREATE POLICY clinic_isolation ON mfa_recovery_codes
    USING (clinic_id = (SELECT app_clinic_id()))
    WITH CHECK (clinic_id = (SELECT app_clinic_id()));
GRANT SELECT, INSERT, DELETE ON mfa_recovery_codes TO molar_app;
GRANT UPDATE (used_at) ON mfa_recovery_codes TO molar_app;
