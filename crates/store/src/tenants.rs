use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Error, Result, TenantId, Timestamp};

use crate::{
    connect::db_error,
    tx::{Platform, Tx, on_conn},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    name: String,
    created_at: i64,
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Self {
        Tenant {
            id: TenantId::from_uuid(row.id),
            name: row.name,
            created_at: Timestamp::from_millis(row.created_at),
        }
    }
}

const MAX_NAME_LEN: usize = 200;

impl Tx<Platform> {
    pub async fn create_tenant(&mut self, name: &str) -> Result<Tenant> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(Error::validation(format!(
                "tenant name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.to_string(),
            created_at: Timestamp::now(),
        };
        on_conn!(&mut self.conn, |c| {
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(tenant.id.as_uuid())
                .bind(&tenant.name)
                .bind(tenant.created_at.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(tenant)
    }

    pub async fn get_tenant(&mut self, id: TenantId) -> Result<Tenant> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TenantRow>("SELECT id, name, created_at FROM tenants WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(c)
                .await
        })
        .map_err(db_error)?
        .map(Tenant::from)
        .ok_or_else(|| Error::not_found("tenant"))
    }

    pub async fn list_tenants(&mut self) -> Result<Vec<Tenant>> {
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TenantRow>("SELECT id, name, created_at FROM tenants ORDER BY id")
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        Ok(rows.into_iter().map(Tenant::from).collect())
    }

    /// A platform setting (`platform_meta`), if set.
    pub async fn platform_value(&mut self, key: &str) -> Result<Option<String>> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, String>("SELECT value FROM platform_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(c)
                .await
        })
        .map_err(db_error)
    }

    pub async fn set_platform_value(&mut self, key: &str, value: &str) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO platform_meta (key, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = $3",
            )
            .bind(key)
            .bind(value)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Records that first-run set-up happened. Exactly one caller, across every process
    /// sharing the database, ever gets `true`.
    pub async fn claim_first_run(&mut self) -> Result<bool> {
        let inserted = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO platform_meta (key, value, updated_at) VALUES ('bootstrap', 'done', $1) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(inserted == 1)
    }
}
