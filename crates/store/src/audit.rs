//! The audit trail: append-only, one chain per tenant plus one for the platform. Each record
//! stores the previous record's link and its own, `HMAC-SHA256(K, prev ‖ canonical JSON)`
//! under a key derived from the vault's active data key (named in the record, see
//! `audit_keys`), so editing, inserting or deleting a record breaks every later link, and
//! without the master key nobody can recompute them.
//!
//! Records written before chains were keyed have no key and a plain `SHA-256(prev ‖
//! canonical JSON)` link. They are accepted only as the start of a chain, before its first
//! keyed record, and verification counts them: anyone with database access could have
//! rewritten those, so their number must only ever shrink (as retention removes them).

use std::{collections::HashMap, sync::Arc};

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use waypost_core::{Error, ErrorCode, Result, TenantId, Timestamp};

use crate::{
    Store,
    audit_keys::MacKey,
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
    /// The data key whose derived key chained this record (HMAC-SHA256); none for a record
    /// from before chains were keyed (plain SHA-256).
    pub key_id: Option<i64>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl AuditRecord {
    fn canonical(&self) -> Vec<u8> {
        // A fixed-order array: stable across serde versions and field renames. A keyed record
        // covers its key id too; a legacy record's array is what it always was.
        let mut fields = serde_json::json!([
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
        ]);
        if let (Some(key_id), Some(array)) = (self.key_id, fields.as_array_mut()) {
            array.push(key_id.into());
        }
        fields.to_string().into_bytes()
    }

    /// The link this record must carry: keyed with `key`, or legacy SHA-256 without one.
    pub(crate) fn expected_hash(&self, key: Option<&MacKey>) -> Vec<u8> {
        let canonical = self.canonical();
        match key {
            Some(key) => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_ref())
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(&self.prev_hash);
                mac.update(&canonical);
                mac.finalize().into_bytes().to_vec()
            }
            None => Sha256::new()
                .chain_update(&self.prev_hash)
                .chain_update(&canonical)
                .finalize()
                .to_vec(),
        }
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
    /// Of those, records from before chains were keyed (plain SHA-256, at the chain's start).
    pub legacy_records: u64,
    /// The first record whose link does not hold, if any.
    pub first_broken_seq: Option<i64>,
}

const GENESIS: [u8; 32] = [0; 32];

macro_rules! insert_sql {
    ($table:literal, $tenant_col:literal, $tenant_val:literal) => {
        concat!(
            "INSERT INTO ", $table, " (seq, id, occurred_at, actor_type, actor_id, action, \
             target_type, target_id, reason, ip, user_agent, request_id, outcome, prev_hash, hash, \
             key_id",
            $tenant_col,
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16",
            $tenant_val,
            ")"
        )
    };
}
const INSERT_TENANT: &str = insert_sql!("audit_events", ", tenant_id", ", $17");
const INSERT_PLATFORM: &str = insert_sql!("platform_audit_events", "", "");

macro_rules! record_columns {
    () => {
        "seq, id, occurred_at, actor_type, actor_id, action, target_type, target_id, reason, ip, \
         user_agent, request_id, outcome, prev_hash, hash, key_id"
    };
}

/// The chain head just advanced, and the data key to chain the new record with.
#[derive(sqlx::FromRow)]
struct AdvancedHead {
    seq: i64,
    hash: Vec<u8>,
    active_key: Option<i64>,
}

/// Advances the chain head (locking it until commit). The active key is read in the same
/// statement, so a rotation moves the next record to the new key at once.
async fn advance_head(conn: &mut Conn, tenant: Option<TenantId>) -> Result<AdvancedHead> {
    // The UPDATE takes the head's row lock, so concurrent appends to one chain queue up and
    // each sees its predecessor's hash (SQLite has a single writer anyway).
    match tenant {
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
                sqlx::query_as::<_, AdvancedHead>(
                    "UPDATE audit_heads SET seq = seq + 1 WHERE tenant_id = $1 \
                     RETURNING seq, hash, (SELECT id FROM encryption_keys WHERE state = 'active') \
                     AS active_key",
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
            sqlx::query_as::<_, AdvancedHead>(
                "UPDATE platform_audit_head SET seq = seq + 1 WHERE id = 1 \
                 RETURNING seq, hash, (SELECT id FROM encryption_keys WHERE state = 'active') \
                 AS active_key",
            )
            .fetch_one(c)
            .await
        }),
    }
    .map_err(db_error)
}

impl<S: Scope> Tx<S> {
    /// Appends to the audit chain of this transaction's tenant (or the platform chain).
    pub async fn audit(&mut self, event: AuditEvent) -> Result<AuditRecord> {
        let tenant = self.scope.tenant_id();
        let head = advance_head(&mut self.conn, tenant).await?;
        let no_key = || {
            Error::new(
                ErrorCode::Internal,
                "the audit trail has no encryption key to chain with (open the vault first)",
            )
        };
        let key_id = head.active_key.ok_or_else(no_key)?;
        let key = self
            .audit_keys
            .key(&mut self.conn, key_id)
            .await?
            .ok_or_else(no_key)?;
        let mut record = AuditRecord {
            seq: head.seq,
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
            prev_hash: head.hash,
            hash: Vec::new(),
            key_id: Some(key_id),
        };
        record.hash = record.expected_hash(Some(&key));
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
                .bind(&r.hash)
                .bind(r.key_id);
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

    /// How many of the tenant's audit records the data key `key_id` chained: while any remain,
    /// the key must stay to verify them.
    pub async fn count_audit_on_key(&mut self, key_id: i64) -> Result<i64> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1 AND key_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(key_id)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)
    }
}

impl Tx<Platform> {
    /// As [`Tx::count_audit_on_key`], for the platform chain.
    pub async fn count_platform_audit_on_key(&mut self, key_id: i64) -> Result<i64> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM platform_audit_events WHERE key_id = $1",
            )
            .bind(key_id)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)
    }

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

/// Where a walk along a chain has got to.
#[derive(Default)]
struct ChainWalk {
    prev: Option<Vec<u8>>,
    next_seq: Option<i64>,
    keyed_seen: bool,
    legacy: u64,
}

impl ChainWalk {
    /// Takes the next record; `false` when its link does not hold.
    fn step(&mut self, record: &AuditRecord, keys: &HashMap<i64, Arc<MacKey>>) -> bool {
        let linked = self.prev.as_ref().is_none_or(|p| *p == record.prev_hash);
        let in_sequence = self.next_seq.is_none_or(|seq| seq == record.seq);
        let authentic = match record.key_id {
            // A plain hash after a keyed link is what a forger without the key would write.
            None => !self.keyed_seen && record.hash == record.expected_hash(None),
            Some(id) => keys
                .get(&id)
                .is_some_and(|key| record.hash == record.expected_hash(Some(key))),
        };
        if !(linked && in_sequence && authentic) {
            return false;
        }
        self.keyed_seen |= record.key_id.is_some();
        self.legacy += u64::from(record.key_id.is_none());
        self.prev = Some(record.hash.clone());
        self.next_seq = Some(record.seq + 1);
        true
    }

    /// The first record whose link does not hold, if any.
    fn walk(&mut self, records: &[AuditRecord], keys: &HashMap<i64, Arc<MacKey>>) -> Option<i64> {
        records
            .iter()
            .find(|record| !self.step(record, keys))
            .map(|record| record.seq)
    }
}

impl Store {
    /// The MAC keys of every key `records` name, added to `keys`. A key id that is not stored
    /// stays absent, and its records fail to verify.
    async fn chain_keys(
        &self,
        records: &[AuditRecord],
        keys: &mut HashMap<i64, Arc<MacKey>>,
    ) -> Result<()> {
        let mut missing: Vec<i64> = records
            .iter()
            .filter_map(|r| r.key_id)
            .filter(|id| !keys.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.platform_read().await?;
        for id in missing {
            if let Some(key) = self.audit_keys.key(&mut tx.conn, id).await? {
                keys.insert(id, key);
            }
        }
        tx.rollback().await
    }

    async fn audit_page(
        &self,
        tenant: Option<TenantId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        match tenant {
            Some(t) => {
                let filter = AuditFilter {
                    after_seq: Some(after),
                    ..AuditFilter::default()
                };
                self.tenant_read(t).await?.list_audit(&filter, limit).await
            }
            None => {
                self.platform_read()
                    .await?
                    .list_platform_audit(after, limit)
                    .await
            }
        }
    }

    /// Verifies a tenant's chain, or the platform chain when `tenant` is `None`; needs the
    /// audit keys ([`Store::set_audit_keys`]). The head is read first and only records up to
    /// it are walked, so appends during the walk (a live server signs people in all the time)
    /// are not mistaken for tampering.
    pub async fn verify_audit(&self, tenant: Option<TenantId>) -> Result<ChainReport> {
        const PAGE: u32 = 1000;
        let head = self.audit_head(tenant).await?;
        let head_seq = head.as_ref().map_or(0, |(seq, _)| *seq);
        let (mut walk, mut keys, mut after, mut count) =
            (ChainWalk::default(), HashMap::new(), 0_i64, 0_u64);
        let mut last_hash: Option<Vec<u8>> = None;
        let report = |walk: &ChainWalk, records, first_broken_seq| ChainReport {
            chain: chain_name(tenant),
            records,
            legacy_records: walk.legacy,
            first_broken_seq,
        };
        loop {
            let mut page = self.audit_page(tenant, after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            page.retain(|r| r.seq <= head_seq);
            count += page.len() as u64;
            self.chain_keys(&page, &mut keys).await?;
            if let Some(broken) = walk.walk(&page, &keys) {
                return Ok(report(&walk, count, Some(broken)));
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
        let first_broken_seq = match (&head, walk.next_seq, &last_hash) {
            (Some((head_seq, head_hash)), Some(next), Some(hash)) => {
                (next != head_seq + 1 || hash != head_hash).then_some(next.min(head_seq + 1))
            }
            // Retention always leaves its own `audit.pruned` record, so an empty chain with a
            // head past zero lost records.
            (Some((head_seq, _)), None, _) if *head_seq > 0 => Some(1),
            _ => None,
        };
        Ok(report(&walk, count, first_broken_seq))
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
