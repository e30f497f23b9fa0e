-- Audit chains keyed (SQLite). Twin: postgres/0008_keyed_audit.sql.
-- Each record names the data key whose derived key chained it (HMAC-SHA256); records written
-- before this migration keep a NULL key and their plain SHA-256 link.
ALTER TABLE audit_events ADD COLUMN key_id INTEGER;
ALTER TABLE platform_audit_events ADD COLUMN key_id INTEGER;
