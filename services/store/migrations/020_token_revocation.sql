-- A token can be revoked (`DELETE /v1/workspaces/{ws}/tokens/{id}`, `touchline token revoke`).
-- The row stays, so that `token list` still says when it was made and when it was revoked; a
-- revoked hash is never accepted again. A token's id is the hex of its hash's first 6 bytes.
ALTER TABLE tokens ADD COLUMN revoked_at timestamptz;
