-- Twin: postgres/0006_ingest.sql, which adds a function that stores a batch of webhooks in one
-- round trip. SQLite runs in-process and has no round trips to save; this migration exists so
-- both engines report the same schema version.
SELECT 1;
