-- Twin: postgres/0007_channel_verification.sql.
-- A Meta number is checked against the Graph API (with the channel's own token) before the
-- platform app's webhooks are routed to it: a tenant cannot claim a number it does not own.
-- NULL means never checked (channels made before this version: pending until verified).
ALTER TABLE channels ADD COLUMN verification TEXT;
ALTER TABLE channels ADD COLUMN verification_reason TEXT;
-- Routing by account: template, quality and account updates carry only the WABA id.
ALTER TABLE channel_directory ADD COLUMN waba_id TEXT;
ALTER TABLE channel_directory ADD COLUMN verified BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX channel_directory_by_waba ON channel_directory (provider, waba_id);
