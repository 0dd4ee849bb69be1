-- A session's live refresh token is found through the session row itself, so creating a session
-- writes one row; refresh_tokens keeps rotated tokens only, each written as it is rotated away (with
-- its rotation time and successor). Rows it holds for tokens still live, written by creates and
-- rotations before this migration, stay where they are: a rotation completes them, and the service
-- reads only rotated rows from this table.
ALTER TABLE sessions ADD UNIQUE INDEX sessions_by_refresh_token (tenant_id, refresh_token_hash);
