-- Consent history and per-tenant keyword settings (SQLite). Twin: postgres/0004_consent.sql.

-- Consent is a history: the current state for a purpose is the latest event.
CREATE TABLE consent_events (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    id          BLOB NOT NULL,
    contact_id  BLOB NOT NULL,
    purpose     TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('opt_in', 'opt_out')),
    source      TEXT NOT NULL CHECK (source IN ('api', 'keyword', 'import', 'meta_signal', 'agent')),
    note        TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id)
);
CREATE INDEX consent_events_contact ON consent_events (tenant_id, contact_id, purpose, id);

CREATE TABLE consent_settings (
    tenant_id           BLOB PRIMARY KEY REFERENCES tenants (id),
    opt_out_keywords    TEXT NOT NULL,
    opt_in_keywords     TEXT NOT NULL,
    confirmation_reply  TEXT,
    updated_at          INTEGER NOT NULL
);

CREATE INDEX contacts_phone ON contacts (tenant_id, phone_e164);

-- Raw webhook bodies are deleted after this many days (per tenant).
ALTER TABLE tenant_settings ADD COLUMN raw_payload_retention_days INTEGER NOT NULL DEFAULT 90;
