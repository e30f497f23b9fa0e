-- Foundation schema (PostgreSQL). Keep in step with migrations/sqlite/0001_foundation.sql.
-- Runs as the configured database user, who owns the tables. The application itself works
-- as `waypost_app`, a role that owns nothing and cannot bypass row-level security.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'waypost_app') THEN
        CREATE ROLE waypost_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
EXCEPTION
    -- Another database on this cluster created it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'role waypost_app is missing and % may not create it; as a superuser run: CREATE ROLE waypost_app NOLOGIN; GRANT waypost_app TO %;', current_user, current_user;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'waypost_app', 'MEMBER') THEN
        GRANT waypost_app TO CURRENT_USER;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION '% must be a member of waypost_app; as a superuser run: GRANT waypost_app TO %;', current_user, current_user;
END
$$;

GRANT USAGE ON SCHEMA public TO waypost_app;
GRANT SELECT ON _sqlx_migrations TO waypost_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO waypost_app;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  bigint NOT NULL
);

CREATE TABLE platform_meta (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  bigint NOT NULL
);

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    tenant_id     uuid REFERENCES tenants (id),
    kind          text NOT NULL,
    payload       text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    run_at        bigint NOT NULL,
    attempts      bigint NOT NULL DEFAULT 0,
    max_attempts  bigint NOT NULL,
    lease_owner   text,
    last_error    text,
    dedupe_key    text UNIQUE,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL
);
CREATE INDEX jobs_ready ON jobs (run_at) WHERE state = 'pending';
CREATE INDEX jobs_leased ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (state, updated_at) WHERE state <> 'pending';

CREATE TABLE job_schedules (
    name          text PRIMARY KEY,
    last_period   bigint NOT NULL,
    last_fired_at bigint NOT NULL,
    last_job_id   uuid
);

CREATE TABLE job_probes (
    id            uuid PRIMARY KEY,
    batch_id      uuid NOT NULL,
    enqueued_at   bigint NOT NULL,
    completed_at  bigint,
    completed_by  text,
    runs          bigint NOT NULL DEFAULT 0
);
CREATE INDEX job_probes_batch ON job_probes (batch_id);

CREATE TABLE api_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    prefix        text NOT NULL,
    secret_hash   bytea NOT NULL,
    name          text NOT NULL,
    role          text NOT NULL,
    created_at    bigint NOT NULL,
    expires_at    bigint,
    revoked_at    bigint,
    last_used_at  bigint,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, prefix)
);

-- Second wall behind the store's tenant scoping: a transaction sees only the rows of the
-- tenant it set with set_config('app.tenant_id', …, true); with none set it sees nothing.
-- NULLIF: after a transaction ends the setting reads '' (not NULL) on a pooled connection.
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
