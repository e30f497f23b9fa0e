-- Consent history and per-tenant keyword settings (PostgreSQL). Twin: sqlite/0004_consent.sql.

CREATE TABLE consent_events (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL,
    contact_id  uuid NOT NULL,
    purpose     text NOT NULL,
    action      text NOT NULL CHECK (action IN ('opt_in', 'opt_out')),
    source      text NOT NULL CHECK (source IN ('api', 'keyword', 'import', 'meta_signal', 'agent')),
    note        text,
    at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id)
);
CREATE INDEX consent_events_contact ON consent_events (tenant_id, contact_id, purpose, id);

CREATE TABLE consent_settings (
    tenant_id           uuid PRIMARY KEY REFERENCES tenants (id),
    opt_out_keywords    text NOT NULL,
    opt_in_keywords     text NOT NULL,
    confirmation_reply  text,
    updated_at          bigint NOT NULL
);

CREATE INDEX contacts_phone ON contacts (tenant_id, phone_e164);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['consent_events', 'consent_settings'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;

-- Raw webhook bodies are deleted after this many days (per tenant).
ALTER TABLE tenant_settings ADD COLUMN raw_payload_retention_days bigint NOT NULL DEFAULT 90;
