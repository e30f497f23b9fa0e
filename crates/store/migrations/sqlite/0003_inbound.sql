-- WhatsApp channels and inbound messages (SQLite). Twin: postgres/0003_inbound.sql.

-- Platform directory: which tenant owns a channel, and which channel a provider's number id
-- belongs to. Needed before a tenant is known (routing a webhook); holds no customer data.
CREATE TABLE channel_directory (
    channel_id       BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id),
    provider         TEXT NOT NULL,
    phone_number_id  TEXT,
    UNIQUE (provider, phone_number_id)
);

-- Webhooks for the platform's own Meta app whose number no channel claims (kept for replay).
CREATE TABLE unrouted_webhooks (
    id           BLOB PRIMARY KEY,
    provider     TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    body         BLOB NOT NULL
);

CREATE TABLE channels (
    tenant_id           BLOB NOT NULL REFERENCES tenants (id),
    id                  BLOB NOT NULL,
    provider            TEXT NOT NULL,
    name                TEXT NOT NULL,
    phone_number_id     TEXT,
    waba_id             TEXT,
    display_number      TEXT,
    throughput_mps      INTEGER NOT NULL,
    graph_api_base_url  TEXT NOT NULL,
    graph_api_version   TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Raw webhook bodies, committed before the provider gets its 200.
CREATE TABLE webhook_inbox (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    id            BLOB NOT NULL,
    channel_id    BLOB NOT NULL,
    provider      TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    body          BLOB NOT NULL,
    processed_at  INTEGER,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);
CREATE INDEX webhook_inbox_received ON webhook_inbox (tenant_id, received_at);

CREATE TABLE contacts (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    id            BLOB NOT NULL,
    wa_id         TEXT,
    bsuid         TEXT,
    phone_e164    TEXT,
    profile_name  TEXT,
    username      TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, wa_id),
    UNIQUE (tenant_id, bsuid)
);

CREATE TABLE conversations (
    tenant_id          BLOB NOT NULL REFERENCES tenants (id),
    id                 BLOB NOT NULL,
    channel_id         BLOB NOT NULL,
    contact_id         BLOB NOT NULL,
    last_inbound_at    INTEGER,
    window_expires_at  INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, channel_id, contact_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id)
);

CREATE TABLE messages (
    tenant_id            BLOB NOT NULL REFERENCES tenants (id),
    id                   BLOB NOT NULL,
    conversation_id      BLOB NOT NULL,
    direction            TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    provider_message_id  TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    content              TEXT NOT NULL,
    referral             TEXT,
    reply_to             TEXT,
    status               TEXT,
    status_rank          INTEGER NOT NULL DEFAULT 0,
    status_at            INTEGER,
    error                TEXT,
    sent_at              INTEGER,
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, provider_message_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, id);

-- A status that arrived before its message waits here and is applied when the message does.
CREATE TABLE pending_statuses (
    tenant_id            BLOB NOT NULL REFERENCES tenants (id),
    provider_message_id  TEXT NOT NULL,
    status               TEXT NOT NULL,
    status_rank          INTEGER NOT NULL,
    status_at            INTEGER,
    error                TEXT,
    received_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider_message_id, status)
);

-- Template, account, quality and preference notices, kept as received per channel.
CREATE TABLE channel_events (
    tenant_id    BLOB NOT NULL REFERENCES tenants (id),
    id           BLOB NOT NULL,
    channel_id   BLOB NOT NULL,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);
