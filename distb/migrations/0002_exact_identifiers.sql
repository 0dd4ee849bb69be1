-- Identifiers compare byte for byte on every supported database. utf8mb4_bin is a PAD SPACE
-- collation on MariaDB and on MySQL 8 alike, so `alice` matched (and revoked) `alice `; the NO PAD
-- binary collations are spelled differently on each (utf8mb4_0900_bin on MySQL 8, utf8mb4_nopad_bin
-- on MariaDB) and neither exists on the other. VARBINARY has no collation and no padding on both.
-- Widths are bytes: user_id holds 255 characters of up to 4 bytes each (the service counts characters).
ALTER TABLE tenants MODIFY id VARBINARY(40) NOT NULL;
ALTER TABLE api_keys MODIFY tenant_id VARBINARY(40) NOT NULL, MODIFY id VARBINARY(40) NOT NULL;
ALTER TABLE sessions
  MODIFY tenant_id VARBINARY(40) NOT NULL,
  MODIFY id VARBINARY(40) NOT NULL,
  MODIFY user_id VARBINARY(1020) NOT NULL;
ALTER TABLE refresh_tokens MODIFY tenant_id VARBINARY(40) NOT NULL, MODIFY session_id VARBINARY(40) NOT NULL;
ALTER TABLE signing_keys MODIFY id VARBINARY(40) NOT NULL;
ALTER TABLE tenant_policies MODIFY tenant_id VARBINARY(40) NOT NULL;
