use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Result, SecretId, Timestamp};

use crate::{
    connect::db_error,
    tx::{Tenant, Tx, on_conn},
};

/// Per-tenant policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TenantSettings {
    /// How long audit records are kept (default 365 days).
    pub audit_retention_days: i64,
    /// How long raw webhook bodies are kept once processed (default 90 days).
    pub raw_payload_retention_days: i64,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            audit_retention_days: 365,
            raw_payload_retention_days: 90,
        }
    }
}

/// An OpenAI-compatible provider for AI replies. The API key itself lives in
/// `tenant_secrets`, encrypted; this row only points at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiSettingsRecord {
    pub provider: String,
    pub base_url: String,
    pub model: String,
    pub enabled: bool,
    pub api_key_secret_id: Option<SecretId>,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct AiRow {
    provider: String,
    base_url: String,
    model: String,
    enabled: bool,
    api_key_secret_id: Option<Uuid>,
    updated_at: i64,
}

impl Tx<Tenant> {
    pub async fn tenant_settings(&mut self) -> Result<TenantSettings> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TenantSettings>(
                "SELECT audit_retention_days, raw_payload_retention_days FROM tenant_settings \
                 WHERE tenant_id = $1",
            )
            .bind(tenant.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.unwrap_or_default())
    }

    pub async fn put_tenant_settings(&mut self, settings: &TenantSettings) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO tenant_settings (tenant_id, audit_retention_days, \
                 raw_payload_retention_days, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id) DO UPDATE SET audit_retention_days = $2, \
                 raw_payload_retention_days = $3, updated_at = $4",
            )
            .bind(tenant.as_uuid())
            .bind(settings.audit_retention_days)
            .bind(settings.raw_payload_retention_days)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn ai_settings(&mut self) -> Result<Option<AiSettingsRecord>> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, AiRow>(
                "SELECT provider, base_url, model, enabled, api_key_secret_id, updated_at \
                 FROM ai_settings WHERE tenant_id = $1",
            )
            .bind(tenant.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(|r| AiSettingsRecord {
            provider: r.provider,
            base_url: r.base_url,
            model: r.model,
            enabled: r.enabled,
            api_key_secret_id: r.api_key_secret_id.map(SecretId::from_uuid),
            updated_at: Timestamp::from_millis(r.updated_at),
        }))
    }

    pub async fn put_ai_settings(&mut self, s: &AiSettingsRecord) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO ai_settings (tenant_id, provider, base_url, model, enabled, \
                 api_key_secret_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant_id) DO UPDATE SET provider = $2, base_url = $3, model = $4, \
                 enabled = $5, api_key_secret_id = $6, updated_at = $7",
            )
            .bind(tenant.as_uuid())
            .bind(&s.provider)
            .bind(&s.base_url)
            .bind(&s.model)
            .bind(s.enabled)
            .bind(s.api_key_secret_id.map(|id| *id.as_uuid()))
            .bind(s.updated_at.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }
}
