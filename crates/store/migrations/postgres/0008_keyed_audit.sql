-- Audit chains keyed (PostgreSQL). Twin: sqlite/0008_keyed_audit.sql.
-- Each record names the data key whose derived key chained it (HMAC-SHA256); records written
-- before this migration keep a NULL key and their plain SHA-256 link. No foreign key: every
-- append would share-lock the active key's row, and a record naming a key that does not
-- exist simply fails verification.
ALTER TABLE audit_events ADD COLUMN key_id bigint;
ALTER TABLE platform_audit_events ADD COLUMN key_id bigint;
