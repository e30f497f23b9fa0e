-- Outbound messages, the paced outbox, idempotency keys and templates (PostgreSQL).
-- Twin: sqlite/0005_outbound.sql.

-- An outbound message has no provider id until the provider accepts it.
ALTER TABLE messages ALTER COLUMN provider_message_id DROP NOT NULL;
-- Outbound: who it goes to (E.164 or BSUID) and its pricing category (consent checks).
ALTER TABLE messages ADD COLUMN recipient text;
ALTER TABLE messages ADD COLUMN category text;

-- The send side of a message that is not finished yet: written in the transaction that
-- creates the message, taken by the channel's dispatcher. `in_flight` means an attempt was
-- recorded before calling the provider; it is never repeated blindly.
CREATE TABLE outbox (
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    message_id          uuid NOT NULL,
    channel_id          uuid NOT NULL,
    lane                bigint NOT NULL,
    recipient           text NOT NULL,
    -- The provider-neutral message to send (a copy of the message's content).
    payload             text NOT NULL,
    state               text NOT NULL CHECK (state IN ('pending', 'in_flight')),
    not_before          bigint NOT NULL,
    attempts            bigint NOT NULL DEFAULT 0,
    attempt_owner       text,
    attempt_started_at  bigint,
    created_at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, message_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);
CREATE INDEX outbox_ready ON outbox (tenant_id, channel_id, state, lane, not_before);

-- `Idempotency-Key` → the message it created, for 24 hours.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    key           text NOT NULL,
    request_hash  text NOT NULL,
    message_id    uuid NOT NULL,
    created_at    bigint NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE templates (
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    id                    uuid NOT NULL,
    channel_id            uuid NOT NULL,
    provider_template_id  text,
    name                  text NOT NULL,
    language              text NOT NULL,
    category              text NOT NULL,
    status                text NOT NULL,
    quality               text,
    parameter_format      text NOT NULL,
    components            text NOT NULL,
    reason                text,
    created_at            bigint NOT NULL,
    updated_at            bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, channel_id, name, language),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);

-- Whether a channel may send: `active`, `paused` (spam or integrity limits: a person must
-- look) or `credentials_invalid` (held until new credentials are stored).
-- The provider-side account a BSP send needs: the Gupshup app name, or Bird's
-- `workspace_id/channel_id`.
ALTER TABLE channels ADD COLUMN provider_account text;
ALTER TABLE channels ADD COLUMN send_state text NOT NULL DEFAULT 'active';
ALTER TABLE channels ADD COLUMN send_state_reason text;
ALTER TABLE channels ADD COLUMN send_state_at bigint;

-- One dispatcher per channel across every process: the lease holder alone sends.
ALTER TABLE channel_directory ADD COLUMN dispatch_owner text;
ALTER TABLE channel_directory ADD COLUMN dispatch_until bigint;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['outbox', 'idempotency_keys', 'templates'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;
