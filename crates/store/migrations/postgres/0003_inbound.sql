-- WhatsApp channels and inbound messages (PostgreSQL). Twin: sqlite/0003_inbound.sql.

-- Platform directory: which tenant owns a channel, and which channel a provider's number id
-- belongs to. Needed before a tenant is known (routing a webhook); holds no customer data.
CREATE TABLE channel_directory (
    channel_id       uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    provider         text NOT NULL,
    phone_number_id  text,
    UNIQUE (provider, phone_number_id)
);

-- Webhooks for the platform's own Meta app whose number no channel claims (kept for replay).
CREATE TABLE unrouted_webhooks (
    id           uuid PRIMARY KEY,
    provider     text NOT NULL,
    received_at  bigint NOT NULL,
    body         bytea NOT NULL
);

CREATE TABLE channels (
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    id                  uuid NOT NULL,
    provider            text NOT NULL,
    name                text NOT NULL,
    phone_number_id     text,
    waba_id             text,
    display_number      text,
    throughput_mps      bigint NOT NULL,
    graph_api_base_url  text NOT NULL,
    graph_api_version   text NOT NULL,
    created_at          bigint NOT NULL,
    updated_at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Raw webhook bodies, committed before the provider gets its 200.
CREATE TABLE webhook_inbox (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    channel_id    uuid NOT NULL,
    provider      text NOT NULL,
    received_at   bigint NOT NULL,
    body          bytea NOT NULL,
    processed_at  bigint,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);
CREATE INDEX webhook_inbox_received ON webhook_inbox (tenant_id, received_at);

CREATE TABLE contacts (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    wa_id         text,
    bsuid         text,
    phone_e164    text,
    profile_name  text,
    username      text,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, wa_id),
    UNIQUE (tenant_id, bsuid)
);

CREATE TABLE conversations (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    id                 uuid NOT NULL,
    channel_id         uuid NOT NULL,
    contact_id         uuid NOT NULL,
    last_inbound_at    bigint,
    window_expires_at  bigint,
    created_at         bigint NOT NULL,
    updated_at         bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, channel_id, contact_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id)
);

CREATE TABLE messages (
    tenant_id            uuid NOT NULL REFERENCES tenants (id),
    id                   uuid NOT NULL,
    conversation_id      uuid NOT NULL,
    direction            text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    provider_message_id  text NOT NULL,
    kind                 text NOT NULL,
    content              text NOT NULL,
    referral             text,
    reply_to             text,
    status               text,
    status_rank          bigint NOT NULL DEFAULT 0,
    status_at            bigint,
    error                text,
    sent_at              bigint,
    created_at           bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, provider_message_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, id);

-- A status that arrived before its message waits here and is applied when the message does.
CREATE TABLE pending_statuses (
    tenant_id            uuid NOT NULL REFERENCES tenants (id),
    provider_message_id  text NOT NULL,
    status               text NOT NULL,
    status_rank          bigint NOT NULL,
    status_at            bigint,
    error                text,
    received_at          bigint NOT NULL,
    PRIMARY KEY (tenant_id, provider_message_id, status)
);

-- Template, account, quality and preference notices, kept as received per channel.
CREATE TABLE channel_events (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    channel_id   uuid NOT NULL,
    kind         text NOT NULL,
    payload      text NOT NULL,
    received_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['channels', 'webhook_inbox', 'contacts', 'conversations', 'messages', 'pending_statuses', 'channel_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;
