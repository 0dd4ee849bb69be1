-- Numbered refresh tokens (src/domain/refresh-tokens.ts): a session created from now on keeps the
-- generation of its live refresh token and the random nonce its tokens' MACs are made with. A
-- rotation moves the generation on in the session's own row: it no longer changes the unique index
-- on refresh_token_hash nor writes a refresh_tokens row. Sessions created before keep NULL in both
-- and their legacy tokens, with the rows and trigger of migrations 0004 and 0007. Adding nullable
-- columns at the end of a table is an instant ALTER on MariaDB 10.3+ and MySQL 8.0.12+.
ALTER TABLE sessions ADD COLUMN refresh_generation INT UNSIGNED NULL, ADD COLUMN refresh_nonce BINARY(32) NULL;

-- The trigger of migration 0007 ran its INSERT … SELECT … WHERE on every update of a session, even
-- when the WHERE was false, as it now is for every numbered rotation and for every revoke: about a
-- sixth of a rotation's work in the database. Under IF, the same insert runs only when a legacy
-- token rotates. Replaced with its tables locked, as in migration 0008, so that no legacy rotation
-- can land between the DROP and the CREATE without its row.
LOCK TABLES sessions WRITE, session_events WRITE, refresh_tokens WRITE, schema_migrations WRITE;

DROP TRIGGER refresh_tokens_on_rotate;

CREATE TRIGGER refresh_tokens_on_rotate AFTER UPDATE ON sessions FOR EACH ROW BEGIN IF OLD.refresh_token_hash <> NEW.refresh_token_hash THEN INSERT INTO refresh_tokens (tenant_id, token_hash, session_id, created_at, rotated_at, successor_hash) VALUES (NEW.tenant_id, OLD.refresh_token_hash, NEW.id, NEW.refresh_rotated_at, NEW.refresh_rotated_at, NEW.refresh_token_hash) ON DUPLICATE KEY UPDATE rotated_at = COALESCE(rotated_at, NEW.refresh_rotated_at), successor_hash = COALESCE(successor_hash, NEW.refresh_token_hash); END IF; END;

UNLOCK TABLES;
