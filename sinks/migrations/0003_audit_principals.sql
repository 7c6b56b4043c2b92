-- The audit log names the authenticated principal (issue "Who is asking"): its kind, agency
-- (region/branch), roles, the token's issuer and id, and whether the request was served or
-- refused and why. `user` stays the principal's name and `region` the region looked at.
-- Rows written before this migration show the new columns empty, outcome 'ok'.
ALTER TABLE audit_log ADD COLUMN principal_kind String DEFAULT '', ADD COLUMN agency String DEFAULT '', ADD COLUMN roles String DEFAULT '', ADD COLUMN issuer String DEFAULT '', ADD COLUMN token_id String DEFAULT '', ADD COLUMN door String DEFAULT '', ADD COLUMN outcome String DEFAULT 'ok', ADD COLUMN reason String DEFAULT '';
