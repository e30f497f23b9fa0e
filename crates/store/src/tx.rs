use std::sync::Arc;

use sqlx::{Postgres, Sqlite, Transaction};
use waypost_core::{Result, TenantId};

use crate::{audit_keys::AuditKeyring, connect::db_error};

/// An open transaction on either engine. Repository code is written once against it with
/// [`on_conn!`], which expands the same body for each engine's connection type.
pub(crate) enum Conn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$c` bound to the engine's connection (`&mut SqliteConnection` or
/// `&mut PgConnection`). The body is type-checked once per engine.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::tx::Conn::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
            $crate::tx::Conn::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}
pub(crate) use on_conn;

/// What a transaction may touch. Sealed: only [`Tenant`] and [`Platform`] exist.
pub trait Scope: sealed::Sealed + Send {
    /// The tenant that owns what this scope writes, if any.
    fn tenant_id(&self) -> Option<TenantId>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Tenant {}
    impl Sealed for super::Platform {}
}

/// One tenant's data. Obtained only from [`crate::Store::tenant`].
#[derive(Debug, Clone, Copy)]
pub struct Tenant(pub(crate) TenantId);

/// Platform tables (tenants, the job queue, schedules). Tenant tables are invisible here:
/// on PostgreSQL no tenant is set, so row-level security hides every tenant row.
#[derive(Debug, Clone, Copy)]
pub struct Platform;

impl Scope for Tenant {
    fn tenant_id(&self) -> Option<TenantId> {
        Some(self.0)
    }
}

impl Scope for Platform {
    fn tenant_id(&self) -> Option<TenantId> {
        None
    }
}

/// A transaction in a scope. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx<S: Scope> {
    pub(crate) conn: Conn,
    pub(crate) scope: S,
    pub(crate) audit_keys: Arc<AuditKeyring>,
}

impl<S: Scope> Tx<S> {
    pub async fn commit(self) -> Result<()> {
        match self.conn {
            Conn::Sqlite(tx) => tx.commit().await,
            Conn::Postgres(tx) => tx.commit().await,
        }
        .map_err(db_error)
    }

    pub async fn rollback(self) -> Result<()> {
        match self.conn {
            Conn::Sqlite(tx) => tx.rollback().await,
            Conn::Postgres(tx) => tx.rollback().await,
        }
        .map_err(db_error)
    }
}

impl Tx<Platform> {
    /// Continues this transaction inside one tenant's scope, e.g. to create a tenant and its
    /// first credentials atomically. Platform tables are out of reach from then on.
    pub async fn enter_tenant(self, tenant: TenantId) -> Result<Tx<Tenant>> {
        let mut conn = self.conn;
        if let Conn::Postgres(tx) = &mut conn {
            crate::connect::set_tenant(tx, tenant).await?;
        }
        Ok(Tx {
            conn,
            scope: Tenant(tenant),
            audit_keys: self.audit_keys,
        })
    }
}

impl Tx<Tenant> {
    pub fn tenant(&self) -> TenantId {
        self.scope.0
    }
}
