//! The audit trail: append-only, one hash chain per tenant plus one for the platform. Each
//! record stores the previous record's hash and its own, `SHA-256(prev ‖ canonical JSON)`,
//! so editing, inserting or deleting a record in the middle breaks every later link.

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use waypost_core::{Error, Result, TenantId, Timestamp};

use crate::{
    Store,
    connect::db_error,
    tx::{Conn, Platform, Scope, Tenant, Tx, on_conn},
};

/// What happened, who did it and from where. Never put secrets or message content here.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// `user`, `api_key`, `operator`, `system` or `anonymous`.
    pub actor_type: &'static str,
    pub actor_id: Option<String>,
    /// Dotted verb, e.g. `auth.sign_in`, `api_key.create`, `audit.export`.
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Why, when the actor had to say (operators unmasking data).
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: &'static str,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: i64,
    /// Part of what the hash covers, so exports can be verified independently.
    #[schema(value_type = String)]
    pub id: Uuid,
    #[serde(rename = "occurred_at_ms")]
    pub occurred_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    #[serde(serialize_with = "hex_bytes")]
    #[schema(value_type = String)]
    pub prev_hash: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    #[schema(value_type = String)]
    pub hash: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl AuditRecord {
    fn canonical(&self) -> Vec<u8> {
        // A fixed-order array: stable across serde versions and field renames.
        serde_json::json!([
            self.seq,
            self.id.to_string(),
            self.occurred_at,
            self.actor_type,
            self.actor_id,
            self.action,
            self.target_type,
            self.target_id,
            self.reason,
            self.ip,
            self.user_agent,
            self.request_id,
            self.outcome,
        ])
        .to_string()
        .into_bytes()
    }

    fn expected_hash(&self) -> Vec<u8> {
        Sha256::new()
            .chain_update(&self.prev_hash)
            .chain_update(self.canonical())
            .finalize()
            .to_vec()
    }
}

/// Filters for listing a tenant's audit trail; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only records with a sequence number above this (the cursor).
    pub after_seq: Option<i64>,
}

/// The result of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// `platform` or the tenant id.
    pub chain: String,
    pub records: u64,
    /// The first record whose link does not hold, if any.
    pub first_broken_seq: Option<i64>,
}

const GENESIS: [u8; 32] = [0; 32];

macro_rules! insert_sql {
    ($table:literal, $tenant_col:literal, $tenant_val:literal) => {
        concat!(
            "INSERT INTO ", $table, " (seq, id, occurred_at, actor_type, actor_id, action, \
             target_type, target_id, reason, ip, user_agent, request_id, outcome, prev_hash, hash",
            $tenant_col,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15",
            $tenant_val,
            ")"
        )
    };
}
const INSERT_TENANT: &str = insert_sql!("audit_events", ", tenant_id", ", $16");
const INSERT_PLATFORM: &str = insert_sql!("platform_audit_events", "", "");

macro_rules! record_columns {
    () => {
        "seq, id, occurred_at, actor_type, actor_id, action, target_type, target_id, reason, ip, \
         user_agent, request_id, outcome, prev_hash, hash"
    };
}

/// Advances the chain head (locking it until commit) and returns `(seq, prev_hash)`.
async fn advance_head(conn: &mut Conn, tenant: Option<TenantId>) -> Result<(i64, Vec<u8>)> {
    #[derive(sqlx::FromRow)]
    struct Head {
        seq: i64,
        hash: Vec<u8>,
    }
    // The UPDATE takes the head's row lock, so concurrent appends to one chain queue up and
    // each sees its predecessor's hash (SQLite has a single writer anyway).
    let head = match tenant {
        Some(t) => {
            on_conn!(&mut *conn, |c| {
                sqlx::query(
                    "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(t.as_uuid())
                .bind(GENESIS.as_slice())
                .execute(&mut *c)
                .await
                .map_err(db_error)?;
                sqlx::query_as::<_, Head>(
                    "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 RETURNING seq, hash",
                )
                .bind(t.as_uuid())
                .fetch_one(c)
                .await
            })
        }
        None => on_conn!(&mut *conn, |c| {
            sqlx::query(
                "INSERT INTO platform_audit_head (id, seq, hash) VALUES (1, 0, $1) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(GENESIS.as_slice())
            .execute(&mut *c)
            .await
            .map_err(db_error)?;
            sqlx::query_as::<_, Head>(
                "UPDATE platform_audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
            )
            .fetch_one(c)
            .await
        }),
    }
    .map_err(db_error)?;
    Ok((head.seq, head.hash))
}

impl<S: Scope> Tx<S> {
    /// Appends to the audit chain of this transaction's tenant (or the platform chain).
    pub async fn audit(&mut self, event: AuditEvent) -> Result<AuditRecord> {
        let tenant = self.scope.tenant_id();
        let (seq, prev_hash) = advance_head(&mut self.conn, tenant).await?;
        let mut record = AuditRecord {
            seq,
            id: Uuid::now_v7(),
            occurred_at: Timestamp::now().as_millis(),
            actor_type: event.actor_type.to_string(),
            actor_id: event.actor_id,
            action: event.action,
            target_type: event.target_type,
            target_id: event.target_id,
            reason: event.reason,
            ip: event.ip,
            user_agent: event.user_agent,
            request_id: event.request_id,
            outcome: event.outcome.to_string(),
            prev_hash,
            hash: Vec::new(),
        };
        record.hash = record.expected_hash();
        let hash = &record.hash;
        on_conn!(&mut self.conn, |c| {
            match tenant {
                Some(t) => sqlx::query("UPDATE audit_heads SET hash = $2 WHERE tenant_id = $1")
                    .bind(*t.as_uuid())
                    .bind(hash),
                None => {
                    sqlx::query("UPDATE platform_audit_head SET hash = $1 WHERE id = 1").bind(hash)
                }
            }
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        let sql = if tenant.is_some() {
            INSERT_TENANT
        } else {
            INSERT_PLATFORM
        };
        let r = &record;
        on_conn!(&mut self.conn, |c| {
            let query = sqlx::query(sql)
                .bind(r.seq)
                .bind(r.id)
                .bind(r.occurred_at)
                .bind(&r.actor_type)
                .bind(&r.actor_id)
                .bind(&r.action)
                .bind(&r.target_type)
                .bind(&r.target_id)
                .bind(&r.reason)
                .bind(&r.ip)
                .bind(&r.user_agent)
                .bind(&r.request_id)
                .bind(&r.outcome)
                .bind(&r.prev_hash)
                .bind(&r.hash);
            match tenant {
                Some(t) => query.bind(*t.as_uuid()),
                None => query,
            }
            .execute(c)
            .await
            .map(|res| res.rows_affected())
        })
        .map_err(db_error)?;
        Ok(record)
    }
}

impl Tx<Tenant> {
    /// The tenant's audit records in sequence order, filtered, at most `limit`.
    pub async fn list_audit(
        &mut self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, AuditRecord>(concat!(
                "SELECT ",
                record_columns!(),
                " FROM audit_events WHERE tenant_id = $1 AND seq > $2 \
                 AND ($3 = '' OR actor_id = $3) AND ($4 = '' OR action = $4) \
                 AND ($5 = '' OR target_type = $5) AND ($6 = '' OR target_id = $6) \
                 AND occurred_at >= $7 AND occurred_at <= $8 ORDER BY seq LIMIT $9"
            ))
            .bind(tenant.as_uuid())
            .bind(filter.after_seq.unwrap_or(0))
            .bind(filter.actor_id.as_deref().unwrap_or(""))
            .bind(filter.action.as_deref().unwrap_or(""))
            .bind(filter.target_type.as_deref().unwrap_or(""))
            .bind(filter.target_id.as_deref().unwrap_or(""))
            .bind(filter.from.map_or(i64::MIN, Timestamp::as_millis))
            .bind(filter.until.map_or(i64::MAX, Timestamp::as_millis))
            .bind(i64::from(limit))
            .fetch_all(c)
            .await
        })
        .map_err(db_error)
    }

    /// Deletes records older than `before` (retention). The chain stays verifiable from the
    /// oldest record kept, whose stored `prev_hash` becomes the anchor.
    pub async fn prune_audit(&mut self, before: Timestamp) -> Result<u64> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            // By sequence, not time: a clock step must not punch a hole mid-chain.
            sqlx::query(
                "DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= \
                 (SELECT MAX(seq) FROM audit_events WHERE tenant_id = $1 AND occurred_at < $2)",
            )
            .bind(tenant.as_uuid())
            .bind(before.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }
}

impl Tx<Platform> {
    pub async fn prune_platform_audit(&mut self, before: Timestamp) -> Result<u64> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "DELETE FROM platform_audit_events WHERE seq <= \
                 (SELECT MAX(seq) FROM platform_audit_events WHERE occurred_at < $1)",
            )
            .bind(before.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    pub async fn list_platform_audit(
        &mut self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, AuditRecord>(concat!(
                "SELECT ",
                record_columns!(),
                " FROM platform_audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await
        })
        .map_err(db_error)
    }
}

/// Walks a chain in pages and reports the first broken link.
fn check_links(
    records: &[AuditRecord],
    expected_prev: &mut Option<Vec<u8>>,
    expected_seq: &mut Option<i64>,
) -> Option<i64> {
    for record in records {
        let linked = expected_prev
            .as_ref()
            .is_none_or(|prev| *prev == record.prev_hash);
        let in_sequence = expected_seq.is_none_or(|seq| seq == record.seq);
        if !linked || !in_sequence || record.hash != record.expected_hash() {
            return Some(record.seq);
        }
        *expected_prev = Some(record.hash.clone());
        *expected_seq = Some(record.seq + 1);
    }
    None
}

impl Store {
    /// Verifies a tenant's chain, or the platform chain when `tenant` is `None`. The head is
    /// read first and only records up to it are walked, so appends during the walk (a live
    /// server signs people in all the time) are not mistaken for tampering.
    pub async fn verify_audit(&self, tenant: Option<TenantId>) -> Result<ChainReport> {
        const PAGE: u32 = 1000;
        let head = self.audit_head(tenant).await?;
        let head_seq = head.as_ref().map_or(0, |(seq, _)| *seq);
        let (mut prev, mut seq, mut after, mut count) = (None, None, 0_i64, 0_u64);
        let mut last_hash: Option<Vec<u8>> = None;
        loop {
            let mut page = match tenant {
                Some(t) => {
                    let mut tx = self.tenant_read(t).await?;
                    let filter = AuditFilter {
                        after_seq: Some(after),
                        ..AuditFilter::default()
                    };
                    tx.list_audit(&filter, PAGE).await?
                }
                None => {
                    self.platform_read()
                        .await?
                        .list_platform_audit(after, PAGE)
                        .await?
                }
            };
            let full = page.len() == PAGE as usize;
            page.retain(|r| r.seq <= head_seq);
            count += page.len() as u64;
            if let Some(broken) = check_links(&page, &mut prev, &mut seq) {
                return Ok(ChainReport {
                    chain: chain_name(tenant),
                    records: count,
                    first_broken_seq: Some(broken),
                });
            }
            match page.last() {
                Some(last) => {
                    after = last.seq;
                    last_hash = Some(last.hash.clone());
                }
                None => break,
            }
            if !full || after >= head_seq {
                break;
            }
        }
        // The head must end the chain: deleting the newest records, or rewriting them and
        // their hashes, is tampering too.
        let first_broken_seq = match (&head, seq, &last_hash) {
            (Some((head_seq, head_hash)), Some(next), Some(hash)) => {
                (next != head_seq + 1 || hash != head_hash).then_some(next.min(head_seq + 1))
            }
            // Retention always leaves its own `audit.pruned` record, so an empty chain with a
            // head past zero lost records.
            (Some((head_seq, _)), None, _) if *head_seq > 0 => Some(1),
            _ => None,
        };
        Ok(ChainReport {
            chain: chain_name(tenant),
            records: count,
            first_broken_seq,
        })
    }

    async fn audit_head(&self, tenant: Option<TenantId>) -> Result<Option<(i64, Vec<u8>)>> {
        #[derive(sqlx::FromRow)]
        struct Head {
            seq: i64,
            hash: Vec<u8>,
        }
        let head = match tenant {
            Some(t) => {
                let mut tx = self.tenant_read(t).await?;
                on_conn!(&mut tx.conn, |c| {
                    sqlx::query_as::<_, Head>(
                        "SELECT seq, hash FROM audit_heads WHERE tenant_id = $1",
                    )
                    .bind(t.as_uuid())
                    .fetch_optional(c)
                    .await
                })
            }
            None => {
                let mut tx = self.platform_read().await?;
                on_conn!(&mut tx.conn, |c| {
                    sqlx::query_as::<_, Head>(
                        "SELECT seq, hash FROM platform_audit_head WHERE id = 1",
                    )
                    .fetch_optional(c)
                    .await
                })
            }
        }
        .map_err(db_error)?;
        Ok(head.map(|h| (h.seq, h.hash)))
    }
}

fn chain_name(tenant: Option<TenantId>) -> String {
    tenant.map_or_else(|| "platform".to_string(), |t| t.to_string())
}

/// Used when a caller needs an `Error` for a broken chain.
pub fn broken_chain_error(report: &ChainReport) -> Option<Error> {
    report.first_broken_seq.map(|seq| {
        Error::new(
            waypost_core::ErrorCode::Conflict,
            format!("audit chain {} is broken at record {seq}", report.chain),
        )
    })
}
