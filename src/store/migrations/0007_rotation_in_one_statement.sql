-- A refresh rotation is one statement: the session's UPDATE that moves its live refresh token to the
-- successor also records the token it rotated away, in refresh_tokens, by the trigger below: one
-- statement and one commit where there were two, and no state in which one write landed without the
-- other. refresh_rotated_at is the exact instant the live token took over (NULL for a session's first
-- token); the trigger records it as the rotated token's rotation time, from which the grace window runs.
-- A token's row may already exist (rows from before migration 0004 hold live tokens with no rotation
-- yet): its first rotation time and successor are kept. Accepted as written by MySQL 8.0 and MariaDB
-- 10.6+ (both allow several AFTER UPDATE triggers on one table; they run in creation order).
ALTER TABLE sessions ADD COLUMN refresh_rotated_at DATETIME(6) NULL;

CREATE TRIGGER refresh_tokens_on_rotate AFTER UPDATE ON sessions FOR EACH ROW
  INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at, rotated_at, successor_hash)
  SELECT NEW.tenant_id, OLD.refresh_token_hash, NEW.id, NEW.refresh_rotated_at, NEW.refresh_rotated_at, NEW.refresh_token_hash
    FROM DUAL WHERE OLD.refresh_token_hash <> NEW.refresh_token_hash
  ON DUPLICATE KEY UPDATE rotated_at = COALESCE(rotated_at, NEW.refresh_rotated_at),
                          successor_hash = COALESCE(successor_hash, NEW.refresh_token_hash);
