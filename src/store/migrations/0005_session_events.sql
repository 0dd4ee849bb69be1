-- The event log: one row per change a consumer must hear of, written by triggers in the statement
-- (and so the transaction) that makes the change, on every path alike: a session created; a session
-- revoked (state 0 -> 2, whatever the reason: a revoke call, revoke-all, refresh-token reuse, the
-- per-user cap); a session's end by time recorded (0 -> 1); a signing key inserted (published in
-- JWKS from then on) or revoked.
--
-- `id` is the order rows were inserted in, which is not the order they commit in: a reader that
-- resumed after id N would skip a row with a smaller id whose transaction commits later. So delivery
-- follows `seq`, assigned after commit by one sequencer at a time (src/workers/event-sequencer.ts),
-- which only ever sees committed rows: a late commit gets a later seq, never a skipped one.
CREATE TABLE IF NOT EXISTS session_events (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  seq BIGINT UNSIGNED NULL,
  -- NULL for the service's own events (signing keys), which every tenant's feed carries.
  tenant_id VARBINARY(40) NULL,
  type VARCHAR(32) NOT NULL,
  session_id VARBINARY(40) NULL,
  user_id VARBINARY(1020) NULL,
  reason VARCHAR(32) NULL,
  actor VARBINARY(64) NULL,
  key_id VARBINARY(40) NULL,
  occurred_at DATETIME(6) NOT NULL,
  -- When the sequencer numbered it: retention counts from here, not from occurred_at (an end by
  -- time is recorded after it occurred, and must still reach every reader).
  sequenced_at DATETIME(6) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY session_events_by_seq (seq),
  KEY session_events_by_tenant (tenant_id, seq),
  KEY session_events_by_time (occurred_at),
  KEY session_events_by_sequenced (sequenced_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The highest seq retention has deleted through: a cursor before it may have missed events.
CREATE TABLE IF NOT EXISTS session_event_log (
  id TINYINT UNSIGNED NOT NULL,
  purged_through_seq BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB;
INSERT IGNORE INTO session_event_log (id, purged_through_seq) VALUES (1, 0);

CREATE TRIGGER session_events_on_create AFTER INSERT ON sessions FOR EACH ROW
  INSERT INTO session_events (tenant_id, type, session_id, user_id, occurred_at)
  VALUES (NEW.tenant_id, 'session.created', NEW.id, NEW.user_id, NEW.created_at);

CREATE TRIGGER session_events_on_end AFTER UPDATE ON sessions FOR EACH ROW
  INSERT INTO session_events (tenant_id, type, session_id, user_id, reason, actor, occurred_at)
  SELECT NEW.tenant_id, IF(NEW.state = 2, 'session.revoked', 'session.ended'), NEW.id, NEW.user_id, NEW.end_reason, NEW.ended_by, NEW.ends_at
  FROM DUAL WHERE OLD.state = 0 AND NEW.state <> 0;

CREATE TRIGGER session_events_on_key_insert AFTER INSERT ON signing_keys FOR EACH ROW
  INSERT INTO session_events (type, key_id, occurred_at) VALUES ('signing_key.published', NEW.id, NEW.created_at);

CREATE TRIGGER session_events_on_key_revoke AFTER UPDATE ON signing_keys FOR EACH ROW
  INSERT INTO session_events (type, key_id, occurred_at)
  SELECT 'signing_key.revoked', NEW.id, NEW.revoked_at FROM DUAL WHERE OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL;
