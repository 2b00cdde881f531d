-- Signed-in devices: each refresh token records the address and user agent it was issued
-- to, so that a user's sessions (refresh-token families) can be listed with where they were
-- last used, and ended one by one.
ALTER TABLE refresh_tokens ADD COLUMN ip inet;
ALTER TABLE refresh_tokens ADD COLUMN user_agent text CHECK (length(user_agent) <= 512);
-- A user's live sessions are found through refresh_tokens_user (migration 0002): each live
-- family has one token neither rotated nor revoked.
