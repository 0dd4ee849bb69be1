-- Every table but signing_keys is keyed tenant-first: tenant_id leads each primary key and index,
-- so every statement is a range scan inside one tenant (and a sharding key for Vitess or TiDB).
-- Times are UTC DATETIME(6). Binary collation: ids and hashes compare byte for byte.

CREATE TABLE IF NOT EXISTS tenants (
  id VARCHAR(40) NOT NULL,
  name VARCHAR(200) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS api_keys (
  tenant_id VARCHAR(40) NOT NULL,
  id VARCHAR(40) NOT NULL,
  key_hash BINARY(32) NOT NULL,
  key_hint VARCHAR(32) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  revoked_at DATETIME(6) NULL,
  PRIMARY KEY (tenant_id, id),
  UNIQUE KEY api_keys_hash (tenant_id, key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sessions (
  tenant_id VARCHAR(40) NOT NULL,
  id VARCHAR(40) NOT NULL,
  user_id VARCHAR(255) NOT NULL,
  user_agent VARCHAR(1024) NOT NULL,
  ip_address VARCHAR(45) NOT NULL,
  country VARCHAR(2) NOT NULL,
  device_type VARCHAR(16) NOT NULL,
  role VARCHAR(64) NOT NULL,
  org_id VARCHAR(255) NULL,
  mfa_verified TINYINT(1) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  last_active_at DATETIME(6) NOT NULL,
  expires_at DATETIME(6) NOT NULL,
  -- last_active_at + the tenant's idle timeout at the last refresh; NULL when there is none.
  idle_expires_at DATETIME(6) NULL,
  revoked_at DATETIME(6) NULL,
  revoke_reason VARCHAR(32) NULL,
  -- Who revoked it when known: the API key id of a tenant's call.
  revoked_by VARCHAR(64) NULL,
  -- The session's one live refresh token; rotation touches this row and two token rows, however
  -- long the session's chain of rotated tokens has grown.
  refresh_token_hash BINARY(32) NOT NULL,
  PRIMARY KEY (tenant_id, id),
  KEY sessions_by_created (tenant_id, created_at, id),
  KEY sessions_by_user (tenant_id, user_id, created_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per refresh token ever issued, so a rotated-away token is recognised when it comes back.
CREATE TABLE IF NOT EXISTS refresh_tokens (
  tenant_id VARCHAR(40) NOT NULL,
  token_hash BINARY(32) NOT NULL,
  session_id VARCHAR(40) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  rotated_at DATETIME(6) NULL,
  successor_hash BINARY(32) NULL,
  PRIMARY KEY (tenant_id, token_hash),
  KEY refresh_tokens_by_session (tenant_id, session_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Signing keys are the service's, not a tenant's: one JWKS serves every tenant.
CREATE TABLE IF NOT EXISTS signing_keys (
  id VARCHAR(40) NOT NULL,
  public_x VARCHAR(64) NOT NULL,
  private_key_encrypted VARBINARY(512) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  signs_from DATETIME(6) NOT NULL,
  retired_at DATETIME(6) NULL,
  revoked_at DATETIME(6) NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A tenant's session policy; no row means the defaults (see README).
CREATE TABLE IF NOT EXISTS tenant_policies (
  tenant_id VARCHAR(40) NOT NULL,
  access_token_ttl_seconds INT NOT NULL,
  session_lifetime_seconds INT NOT NULL,
  idle_timeout_seconds INT NULL,
  refresh_grace_seconds INT NOT NULL,
  max_sessions_per_user INT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (tenant_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
