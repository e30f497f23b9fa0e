-- Foundation schema (SQLite). Keep in step with migrations/postgres/0001_foundation.sql:
-- same version numbers, same tables and columns; a test compares the two sets.
-- Ids are UUIDs (16-byte BLOBs here); instants are integer epoch milliseconds.

-- Platform tables: no customer data, read by the platform itself.
CREATE TABLE tenants (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE platform_meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The durable job queue. Payloads carry ids, never customer data.
CREATE TABLE jobs (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB REFERENCES tenants (id),
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    run_at        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    lease_owner   TEXT,
    last_error    TEXT,
    dedupe_key    TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX jobs_ready ON jobs (run_at) WHERE state = 'pending';
CREATE INDEX jobs_leased ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (state, updated_at) WHERE state <> 'pending';

CREATE TABLE job_schedules (
    name          TEXT PRIMARY KEY,
    last_period   INTEGER NOT NULL,
    last_fired_at INTEGER NOT NULL,
    last_job_id   BLOB
);

CREATE TABLE job_probes (
    id            BLOB PRIMARY KEY,
    batch_id      BLOB NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    completed_at  INTEGER,
    completed_by  TEXT,
    runs          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX job_probes_batch ON job_probes (batch_id);

-- Tenant tables: tenant_id leads every primary key, unique constraint and foreign key.
CREATE TABLE api_keys (
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    id            BLOB NOT NULL,
    prefix        TEXT NOT NULL,
    secret_hash   BLOB NOT NULL,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    last_used_at  INTEGER,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, prefix)
);
