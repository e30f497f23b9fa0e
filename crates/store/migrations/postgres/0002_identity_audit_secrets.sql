-- Identity, audit trail and secrets at rest (PostgreSQL). Twin: sqlite/0002_identity_audit_secrets.sql.

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE,
    password_hash  text NOT NULL,
    is_operator    boolean NOT NULL DEFAULT false,
    created_at     bigint NOT NULL,
    updated_at     bigint NOT NULL,
    disabled_at    bigint
);

CREATE TABLE memberships (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE sessions (
    id            bytea PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id),
    tenant_id     uuid REFERENCES tenants (id),
    csrf_token    text NOT NULL,
    created_at    bigint NOT NULL,
    last_seen_at  bigint NOT NULL,
    expires_at    bigint NOT NULL,
    ip            text,
    user_agent    text,
    revoked_at    bigint,
    unmask_until  bigint
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE auth_failures (
    subject  text NOT NULL,
    at       bigint NOT NULL
);
CREATE INDEX auth_failures_subject ON auth_failures (subject, at);

CREATE TABLE encryption_keys (
    id           bigint PRIMARY KEY,
    wrapped_key  bytea NOT NULL,
    state        text NOT NULL CHECK (state IN ('active', 'previous', 'retired')),
    created_at   bigint NOT NULL,
    retired_at   bigint
);

CREATE TABLE platform_audit_events (
    seq          bigint PRIMARY KEY,
    id           uuid NOT NULL,
    occurred_at  bigint NOT NULL,
    actor_type   text NOT NULL,
    actor_id     text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    reason       text,
    ip           text,
    user_agent   text,
    request_id   text,
    outcome      text NOT NULL,
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL
);
CREATE INDEX platform_audit_events_time ON platform_audit_events (occurred_at);

CREATE TABLE platform_audit_head (
    id    bigint PRIMARY KEY CHECK (id = 1),
    seq   bigint NOT NULL,
    hash  bytea NOT NULL
);

CREATE TABLE tenant_settings (
    tenant_id             uuid PRIMARY KEY REFERENCES tenants (id),
    audit_retention_days  bigint NOT NULL,
    updated_at            bigint NOT NULL
);

CREATE TABLE audit_events (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    seq          bigint NOT NULL,
    id           uuid NOT NULL,
    occurred_at  bigint NOT NULL,
    actor_type   text NOT NULL,
    actor_id     text,
    action       text NOT NULL,
    target_type  text,
    target_id    text,
    reason       text,
    ip           text,
    user_agent   text,
    request_id   text,
    outcome      text NOT NULL,
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_events_time ON audit_events (tenant_id, occurred_at);

CREATE TABLE audit_heads (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL
);

CREATE TABLE tenant_secrets (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL,
    purpose     text NOT NULL,
    ciphertext  bytea NOT NULL,
    key_id      bigint NOT NULL REFERENCES encryption_keys (id),
    hint        text NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, purpose)
);
CREATE INDEX tenant_secrets_key ON tenant_secrets (key_id);

CREATE TABLE ai_settings (
    tenant_id          uuid PRIMARY KEY REFERENCES tenants (id),
    provider           text NOT NULL,
    base_url           text NOT NULL,
    model              text NOT NULL,
    enabled            boolean NOT NULL,
    api_key_secret_id  uuid,
    updated_at         bigint NOT NULL,
    FOREIGN KEY (tenant_id, api_key_secret_id) REFERENCES tenant_secrets (tenant_id, id)
);

-- The audit trail is append-only for the application: it may add, read and (for retention)
-- delete old events, never rewrite one.
REVOKE UPDATE ON audit_events, platform_audit_events FROM waypost_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_settings', 'audit_events', 'audit_heads', 'tenant_secrets', 'ai_settings'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END
$$;
