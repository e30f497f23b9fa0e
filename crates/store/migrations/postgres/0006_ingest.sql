-- Webhook ingestion in one round trip (PostgreSQL only; SQLite is in-process and needs none).
-- The group commit stores a batch of raw bodies, of any tenants, and the jobs that process
-- them. As statements (begin with the tenant setting, two inserts per tenant, commit) most of
-- its cost was round trips; as one call in its own implicit transaction it is one.
-- SECURITY INVOKER (the default): it runs as waypost_app, and each tenant's rows are inserted
-- with that tenant set, so row-level security checks every row exactly as an ordinary tenant
-- transaction would. Arrays are columns: element i of each p_inbox_* array is one webhook,
-- element i of each p_job_* array one job.
CREATE FUNCTION waypost_ingest_webhooks(
    p_received_at     bigint,
    p_inbox_tenants   uuid[],
    p_inbox_ids       uuid[],
    p_inbox_channels  uuid[],
    p_inbox_providers text[],
    p_inbox_bodies    bytea[],
    p_job_tenants     uuid[],
    p_job_ids         uuid[],
    p_job_kinds       text[],
    p_job_payloads    text[],
    p_job_run_at      bigint[],
    p_job_max_tries   bigint[],
    p_job_dedupe      text[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_tenant uuid;
BEGIN
    FOR current_tenant IN SELECT DISTINCT t FROM unnest(p_inbox_tenants) AS t LOOP
        -- Transaction-local, like every tenant transaction's setting.
        PERFORM set_config('app.tenant_id', current_tenant::text, true);
        INSERT INTO webhook_inbox (tenant_id, id, channel_id, provider, received_at, body)
        SELECT w.tenant, w.id, w.channel, w.provider, p_received_at, w.body
        FROM unnest(p_inbox_tenants, p_inbox_ids, p_inbox_channels, p_inbox_providers,
                    p_inbox_bodies) AS w (tenant, id, channel, provider, body)
        WHERE w.tenant = current_tenant;
    END LOOP;
    -- The job queue is a platform table (no row-level security): one insert for all.
    INSERT INTO jobs (id, tenant_id, kind, payload, state, run_at, attempts, max_attempts,
                      dedupe_key, created_at, updated_at)
    SELECT j.id, j.tenant, j.kind, j.payload, 'pending', j.run_at, 0, j.max_tries, j.dedupe,
           p_received_at, p_received_at
    FROM unnest(p_job_tenants, p_job_ids, p_job_kinds, p_job_payloads, p_job_run_at,
                p_job_max_tries, p_job_dedupe)
         AS j (tenant, id, kind, payload, run_at, max_tries, dedupe)
    ON CONFLICT (dedupe_key) DO NOTHING;
END
$$;
