-- Outbound messages, the paced outbox, idempotency keys and templates (SQLite).
-- Twin: postgres/0005_outbound.sql.

-- An outbound message has no provider id until the provider accepts it. SQLite cannot drop
-- NOT NULL in place, so the table is rebuilt (nothing references it by foreign key).
CREATE TABLE messages_rebuilt (
    tenant_id            BLOB NOT NULL REFERENCES tenants (id),
    id                   BLOB NOT NULL,
    conversation_id      BLOB NOT NULL,
    direction            TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    provider_message_id  TEXT,
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
    recipient            TEXT,
    category             TEXT,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, provider_message_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);
INSERT INTO messages_rebuilt (tenant_id, id, conversation_id, direction, provider_message_id, kind,
    content, referral, reply_to, status, status_rank, status_at, error, sent_at, created_at)
SELECT tenant_id, id, conversation_id, direction, provider_message_id, kind, content, referral,
    reply_to, status, status_rank, status_at, error, sent_at, created_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, id);

CREATE TABLE outbox (
    tenant_id           BLOB NOT NULL REFERENCES tenants (id),
    message_id          BLOB NOT NULL,
    channel_id          BLOB NOT NULL,
    lane                INTEGER NOT NULL,
    recipient           TEXT NOT NULL,
    -- The provider-neutral message to send (a copy of the message's content).
    payload             TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('pending', 'in_flight')),
    not_before          INTEGER NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    attempt_owner       TEXT,
    attempt_started_at  INTEGER,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, message_id),
    FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);
CREATE INDEX outbox_ready ON outbox (tenant_id, channel_id, state, lane, not_before);

CREATE TABLE idempotency_keys (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    message_id    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE templates (
    tenant_id             BLOB NOT NULL REFERENCES tenants (id),
    id                    BLOB NOT NULL,
    channel_id            BLOB NOT NULL,
    provider_template_id  TEXT,
    name                  TEXT NOT NULL,
    language              TEXT NOT NULL,
    category              TEXT NOT NULL,
    status                TEXT NOT NULL,
    quality               TEXT,
    parameter_format      TEXT NOT NULL,
    components            TEXT NOT NULL,
    reason                TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, channel_id, name, language),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels (tenant_id, id)
);

-- The provider-side account a BSP send needs: the Gupshup app name, or Bird's
-- `workspace_id/channel_id`.
ALTER TABLE channels ADD COLUMN provider_account TEXT;
ALTER TABLE channels ADD COLUMN send_state TEXT NOT NULL DEFAULT 'active';
ALTER TABLE channels ADD COLUMN send_state_reason TEXT;
ALTER TABLE channels ADD COLUMN send_state_at INTEGER;

ALTER TABLE channel_directory ADD COLUMN dispatch_owner TEXT;
ALTER TABLE channel_directory ADD COLUMN dispatch_until INTEGER;
