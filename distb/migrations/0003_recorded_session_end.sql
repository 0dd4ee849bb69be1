-- A session's end, recorded and indexed, so that lists by status and the retention sweep read only
-- the rows they return or delete, however many sessions have ended.
--   state: 0 open (no end recorded; it may still have ended by time, see ends_at),
--          1 ended by time (recorded by the expiry sweep), 2 revoked.
--   ends_at: for an open session, when it is due to end (the earlier of expires_at and
--          idle_expires_at, moved by every refresh); for an ended one, when it ended.
--   end_reason / ended_by: why it ended and, for a revoke, the API key that asked (the old
--          revoke_reason / revoked_by; revoked_at becomes ends_at of a revoked session).
ALTER TABLE sessions
  ADD COLUMN state TINYINT NOT NULL DEFAULT 0,
  ADD COLUMN ends_at DATETIME(6) NULL;
UPDATE sessions SET state = 2, ends_at = revoked_at WHERE revoked_at IS NOT NULL;
UPDATE sessions SET ends_at = LEAST(expires_at, COALESCE(idle_expires_at, expires_at)) WHERE revoked_at IS NULL;
ALTER TABLE sessions
  MODIFY ends_at DATETIME(6) NOT NULL,
  DROP COLUMN revoked_at,
  CHANGE revoke_reason end_reason VARCHAR(32) NULL,
  CHANGE revoked_by ended_by VARCHAR(64) NULL,
  DROP INDEX sessions_by_created,
  DROP INDEX sessions_by_user,
  ADD INDEX sessions_by_state (tenant_id, state, created_at, id),
  ADD INDEX sessions_by_user_state (tenant_id, user_id, state, created_at, id),
  ADD INDEX sessions_by_end (tenant_id, state, ends_at);
-- Rotated refresh tokens are deleted some time after their rotation (the retention sweep).
ALTER TABLE refresh_tokens ADD INDEX refresh_tokens_by_rotation (tenant_id, rotated_at);
-- Background work that one instance at a time should do (the retention sweep) holds a lease here.
-- A row, not GET_LOCK: a lease outlives a connection and works where named locks are not shared
-- (a Galera cluster does not replicate them).
CREATE TABLE IF NOT EXISTS leases (
  name VARBINARY(64) NOT NULL,
  holder VARBINARY(64) NOT NULL,
  expires_at DATETIME(6) NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
