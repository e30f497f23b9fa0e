-- Identity, audit trail and secrets at rest (SQLite). Twin: postgres/0002_identity_audit_secrets.sql.

-- Platform: people who sign in, and which tenants they belong to. No customer data.
CREATE TABLE users (
    id             BLOB PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    is_operator    INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    disabled_at    INTEGER
);

CREATE TABLE memberships (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    user_id     BLOB NOT NULL REFERENCES users (id),
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- Web sessions; the id is the SHA-256 of the cookie's token, never the token itself.
CREATE TABLE sessions (
    id            BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL REFERENCES users (id),
    tenant_id     BLOB REFERENCES tenants (id),
    csrf_token    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    ip            TEXT,
    user_agent    TEXT,
    revoked_at    INTEGER,
    unmask_until  INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Failed sign-ins by account and by IP, for throttling; old rows are pruned.
CREATE TABLE auth_failures (
    subject  TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX auth_failures_subject ON auth_failures (subject, at);

-- Data-encryption keys, each wrapped (AES-256-GCM) by the master key, which never touches
-- the database.
CREATE TABLE encryption_keys (
    id           INTEGER PRIMARY KEY,
    wrapped_key  BLOB NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'previous', 'retired')),
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER
);

-- Platform audit chain: sign-ins and other events that belong to no tenant.
CREATE TABLE platform_audit_events (
    seq          INTEGER PRIMARY KEY,
    id           BLOB NOT NULL,
    occurred_at  INTEGER NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    action       TEXT NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    reason       TEXT,
    ip           TEXT,
    user_agent   TEXT,
    request_id   TEXT,
    outcome      TEXT NOT NULL,
    prev_hash    BLOB NOT NULL,
    hash         BLOB NOT NULL
);
CREATE INDEX platform_audit_events_time ON platform_audit_events (occurred_at);

CREATE TABLE platform_audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);

-- Tenant tables.
CREATE TABLE tenant_settings (
    tenant_id             BLOB PRIMARY KEY REFERENCES tenants (id),
    audit_retention_days  INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);

CREATE TABLE audit_events (
    tenant_id    BLOB NOT NULL REFERENCES tenants (id),
    seq          INTEGER NOT NULL,
    id           BLOB NOT NULL,
    occurred_at  INTEGER NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    action       TEXT NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    reason       TEXT,
    ip           TEXT,
    user_agent   TEXT,
    request_id   TEXT,
    outcome      TEXT NOT NULL,
    prev_hash    BLOB NOT NULL,
    hash         BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, occurred_at);

CREATE TABLE audit_heads (
    tenant_id  BLOB PRIMARY KEY REFERENCES tenants (id),
    seq        INTEGER NOT NULL,
    hash       BLOB NOT NULL
);

CREATE TABLE tenant_secrets (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    id          BLOB NOT NULL,
    purpose     TEXT NOT NULL,
    ciphertext  BLOB NOT NULL,
    key_id      INTEGER NOT NULL REFERENCES encryption_keys (id),
    hint        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, purpose)
);
CREATE INDEX tenant_secrets_key ON tenant_secrets (key_id);

CREATE TABLE ai_settings (
    tenant_id          BLOB PRIMARY KEY REFERENCES tenants (id),
    provider           TEXT NOT NULL,
    base_url           TEXT NOT NULL,
    model              TEXT NOT NULL,
    enabled            INTEGER NOT NULL,
    api_key_secret_id  BLOB,
    updated_at         INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, api_key_secret_id) REFERENCES tenant_secrets (tenant_id, id)
);
