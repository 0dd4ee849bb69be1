-- Webhook endpoints, one row per URL a tenant registered (sessionctl webhooks create). The signing
-- secrets are sealed under the key-encryption key (the dispatcher must read them back to sign);
-- after a rotation the previous secret still signs until previous_secret_until.
-- `position`: every event of the log through this seq has been queued for the endpoint (or was
-- not for it); the dispatcher moves it on as it queues deliveries.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
  id VARBINARY(40) NOT NULL,
  tenant_id VARBINARY(40) NOT NULL,
  url VARBINARY(2048) NOT NULL,
  -- Comma-separated event types; empty: every type.
  event_types VARCHAR(255) NOT NULL,
  secret_sealed VARBINARY(128) NOT NULL,
  previous_secret_sealed VARBINARY(128) NULL,
  previous_secret_until DATETIME(6) NULL,
  is_enabled TINYINT(1) NOT NULL,
  disabled_reason VARCHAR(255) NULL,
  position BIGINT UNSIGNED NOT NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY webhook_endpoints_by_tenant (tenant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per event an endpoint is to receive. state 0: pending (next_attempt_at says when);
-- 1: delivered; 2: given up after the whole retry schedule failed.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  endpoint_id VARBINARY(40) NOT NULL,
  seq BIGINT UNSIGNED NOT NULL,
  state TINYINT UNSIGNED NOT NULL,
  attempts SMALLINT UNSIGNED NOT NULL,
  next_attempt_at DATETIME(6) NULL,
  queued_at DATETIME(6) NOT NULL,
  finished_at DATETIME(6) NULL,
  PRIMARY KEY (endpoint_id, seq),
  KEY webhook_deliveries_due (state, next_attempt_at),
  KEY webhook_deliveries_by_finish (finished_at)
) ENGINE=InnoDB;

-- Every attempt: when, the HTTP status (NULL when no response came) or what went wrong, how long it took.
CREATE TABLE IF NOT EXISTS webhook_attempts (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  endpoint_id VARBINARY(40) NOT NULL,
  seq BIGINT UNSIGNED NOT NULL,
  attempted_at DATETIME(6) NOT NULL,
  status SMALLINT UNSIGNED NULL,
  error VARCHAR(255) NULL,
  duration_ms INT UNSIGNED NOT NULL,
  PRIMARY KEY (id),
  KEY webhook_attempts_by_delivery (endpoint_id, seq),
  KEY webhook_attempts_by_time (attempted_at)
) ENGINE=InnoDB;
