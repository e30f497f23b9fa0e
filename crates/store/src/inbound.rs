//! Channels, the webhook inbox, and what inbound processing writes: contacts, conversations
//! with their 24-hour window, messages (deduplicated on the provider's id) and statuses that
//! only move forward.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;
use waypost_core::{
    ChannelId, ContactId, ConversationId, Cursor, Error, ErrorCode, InboxId, MessageId, Page,
    Result, TenantId, Timestamp,
};

use crate::{
    NewJob, Store,
    connect::db_error,
    jobs::job_rows,
    tx::{Conn, Platform, Tenant, Tx, on_conn},
};

/// The customer-service window: free-form messages are allowed this long after the
/// contact's last inbound message.
pub const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Channel {
    pub id: ChannelId,
    /// `meta`, `360dialog`, `twilio`, `gupshup` or `bird`.
    pub provider: String,
    pub name: String,
    pub phone_number_id: Option<String>,
    pub waba_id: Option<String>,
    pub display_number: Option<String>,
    /// The provider-side account a BSP send needs: the Gupshup app name, or Bird's
    /// `workspace_id/channel_id`.
    pub provider_account: Option<String>,
    /// Messages per second: 80 (default), 1000, or 20 for numbers shared with the app.
    pub throughput_mps: i64,
    pub graph_api_base_url: String,
    pub graph_api_version: String,
    /// `active`, `paused` (Meta flagged spam or an integrity block: a person must resume it)
    /// or `credentials_invalid` (held until new credentials are stored).
    pub send_state: String,
    pub send_state_reason: Option<String>,
    /// Whether the number was checked against the provider with the channel's own
    /// credentials; the platform app's webhooks reach only verified Meta channels.
    pub verification: Verification,
    pub verification_reason: Option<String>,
    pub created_at: Timestamp,
}

/// The check that a Meta number belongs to the WhatsApp Business Account the channel names,
/// made with the channel's own token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Not checked yet (queued, or retrying while the provider is unreachable).
    Pending,
    Verified,
    /// The provider said no, or the channel lacks what the check needs; see the reason.
    Failed,
    /// BSP channels: their webhooks come only to the channel's own URL.
    NotNeeded,
}

impl Verification {
    fn from_column(provider: &str, value: Option<&str>) -> Self {
        match value {
            Some("verified") => Self::Verified,
            Some("failed") => Self::Failed,
            _ if provider != "meta" => Self::NotNeeded,
            _ => Self::Pending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::NotNeeded => "not_needed",
        }
    }
}

pub struct NewChannel {
    pub provider: String,
    pub name: String,
    pub phone_number_id: Option<String>,
    pub waba_id: Option<String>,
    pub display_number: Option<String>,
    pub provider_account: Option<String>,
    pub throughput_mps: i64,
    pub graph_api_base_url: String,
    pub graph_api_version: String,
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    id: Uuid,
    provider: String,
    name: String,
    phone_number_id: Option<String>,
    waba_id: Option<String>,
    display_number: Option<String>,
    provider_account: Option<String>,
    throughput_mps: i64,
    graph_api_base_url: String,
    graph_api_version: String,
    send_state: String,
    send_state_reason: Option<String>,
    verification: Option<String>,
    verification_reason: Option<String>,
    created_at: i64,
}

impl From<ChannelRow> for Channel {
    fn from(r: ChannelRow) -> Self {
        let verification = Verification::from_column(&r.provider, r.verification.as_deref());
        Channel {
            id: ChannelId::from_uuid(r.id),
            provider: r.provider,
            name: r.name,
            phone_number_id: r.phone_number_id,
            waba_id: r.waba_id,
            display_number: r.display_number,
            provider_account: r.provider_account,
            throughput_mps: r.throughput_mps,
            graph_api_base_url: r.graph_api_base_url,
            graph_api_version: r.graph_api_version,
            send_state: r.send_state,
            send_state_reason: r.send_state_reason,
            verification,
            verification_reason: r.verification_reason,
            created_at: Timestamp::from_millis(r.created_at),
        }
    }
}

macro_rules! channel_columns {
    () => {
        "id, provider, name, phone_number_id, waba_id, display_number, provider_account, throughput_mps, \
         graph_api_base_url, graph_api_version, send_state, send_state_reason, verification, \
         verification_reason, created_at"
    };
}

/// Where a webhook goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRoute {
    pub tenant: TenantId,
    pub channel: ChannelId,
}

/// A stored webhook body.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    pub id: InboxId,
    pub channel_id: ChannelId,
    pub provider: String,
    pub received_at: Timestamp,
    pub body: Vec<u8>,
    pub processed_at: Option<Timestamp>,
}

/// The identifiers and names a provider gave for a contact.
#[derive(Debug, Clone, Default)]
pub struct ContactIdentity {
    pub wa_id: Option<String>,
    pub bsuid: Option<String>,
    pub phone_e164: Option<String>,
    pub profile_name: Option<String>,
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub channel_id: ChannelId,
    pub contact_id: ContactId,
    pub contact_name: Option<String>,
    pub contact_wa_id: Option<String>,
    pub contact_bsuid: Option<String>,
    pub last_inbound_at: Option<Timestamp>,
    /// Until when free-form messages may be sent (24 h after the last inbound message).
    pub window_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoredMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The provider's id (a wamid for Meta); none until the provider accepts an outbound
    /// message.
    pub provider_message_id: Option<String>,
    /// Outbound: the recipient (E.164 number or business-scoped user id).
    pub recipient: Option<String>,
    /// Outbound: `marketing`, `utility`, `authentication` or `service`.
    pub category: Option<String>,
    /// The message type (`text`, `image`, `reaction`, ...).
    pub kind: String,
    /// The normalized content.
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub referral: Option<serde_json::Value>,
    pub reply_to: Option<String>,
    pub status: Option<String>,
    pub status_at: Option<Timestamp>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    pub sent_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    id: Uuid,
    conversation_id: Uuid,
    direction: String,
    provider_message_id: Option<String>,
    recipient: Option<String>,
    category: Option<String>,
    kind: String,
    content: String,
    referral: Option<String>,
    reply_to: Option<String>,
    status: Option<String>,
    status_at: Option<i64>,
    error: Option<String>,
    sent_at: Option<i64>,
    created_at: i64,
}

macro_rules! message_columns {
    () => {
        "id, conversation_id, direction, provider_message_id, recipient, category, kind, content, \
         referral, reply_to, status, status_at, error, sent_at, created_at"
    };
}
pub(crate) use message_columns;

impl TryFrom<MessageRow> for StoredMessage {
    type Error = Error;

    fn try_from(r: MessageRow) -> Result<Self> {
        Ok(StoredMessage {
            id: MessageId::from_uuid(r.id),
            conversation_id: ConversationId::from_uuid(r.conversation_id),
            direction: r.direction,
            provider_message_id: r.provider_message_id,
            recipient: r.recipient,
            category: r.category,
            kind: r.kind,
            content: serde_json::from_str(&r.content)
                .map_err(|e| Error::internal("stored JSON", e))?,
            referral: parse_json(r.referral)?,
            reply_to: r.reply_to,
            status: r.status,
            status_at: r.status_at.map(Timestamp::from_millis),
            error: parse_json(r.error)?,
            sent_at: r.sent_at.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(r.created_at),
        })
    }
}

pub struct NewInboundMessage {
    pub conversation_id: ConversationId,
    pub provider_message_id: String,
    pub kind: String,
    pub content: serde_json::Value,
    pub referral: Option<serde_json::Value>,
    pub reply_to: Option<String>,
    pub sent_at: Option<Timestamp>,
}

/// A status to apply to a message.
pub struct StatusChange {
    pub provider_message_id: String,
    pub status: String,
    /// Position in sent < delivered < read < played < failed; only higher ranks apply.
    pub rank: i64,
    pub at: Option<Timestamp>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    Applied,
    /// The message already has this status or a later one.
    Stale,
    /// The message is not known yet; the status waits for it.
    Pending,
}

pub(crate) fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

pub(crate) fn parse_json(text: Option<String>) -> Result<Option<serde_json::Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| Error::internal("stored JSON", e)))
        .transpose()
}

impl Tx<Platform> {
    /// Which tenant owns a channel (per-channel webhook URLs carry only the channel id).
    pub async fn route_channel(&mut self, channel: ChannelId) -> Result<Option<ChannelRoute>> {
        let tenant = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT tenant_id FROM channel_directory WHERE channel_id = $1",
            )
            .bind(channel.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(tenant.map(|t| ChannelRoute {
            tenant: TenantId::from_uuid(t),
            channel,
        }))
    }

    /// Which verified channel a provider's phone number id belongs to (the platform's own
    /// Meta app).
    pub async fn route_phone_number(
        &mut self,
        provider: &str,
        phone_number_id: &str,
    ) -> Result<Option<ChannelRoute>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            channel_id: Uuid,
            tenant_id: Uuid,
        }
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT channel_id, tenant_id FROM channel_directory \
                 WHERE provider = $1 AND phone_number_id = $2 AND verified",
            )
            .bind(provider)
            .bind(phone_number_id)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(|r| ChannelRoute {
            tenant: TenantId::from_uuid(r.tenant_id),
            channel: ChannelId::from_uuid(r.channel_id),
        }))
    }

    /// The verified channels of a WhatsApp Business Account (for updates that name only the
    /// account: templates, quality, account notices).
    pub async fn route_account(
        &mut self,
        provider: &str,
        waba_id: &str,
    ) -> Result<Vec<ChannelRoute>> {
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "SELECT channel_id, tenant_id FROM channel_directory \
                 WHERE provider = $1 AND waba_id = $2 AND verified ORDER BY channel_id",
            )
            .bind(provider)
            .bind(waba_id)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(channel, tenant)| ChannelRoute {
                tenant: TenantId::from_uuid(tenant),
                channel: ChannelId::from_uuid(channel),
            })
            .collect())
    }

    /// Records a verification's outcome where routing reads it: only a verified channel
    /// receives the platform app's webhooks, by number or by its account.
    pub async fn set_route_verified(
        &mut self,
        channel: ChannelId,
        waba_id: Option<&str>,
        verified: bool,
    ) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE channel_directory SET waba_id = $2, verified = $3 WHERE channel_id = $1",
            )
            .bind(channel.as_uuid())
            .bind(waba_id)
            .bind(verified)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn store_unrouted(&mut self, provider: &str, body: &[u8]) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("INSERT INTO unrouted_webhooks (id, provider, received_at, body) VALUES ($1, $2, $3, $4)")
                .bind(Uuid::now_v7())
                .bind(provider)
                .bind(Timestamp::now().as_millis())
                .bind(body)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn prune_unrouted(&mut self, before: Timestamp) -> Result<u64> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM unrouted_webhooks WHERE received_at < $1")
                .bind(before.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    /// Creates a channel and its directory entry in one transaction. A number already
    /// connected anywhere on this server is a conflict.
    pub async fn create_channel(
        self,
        tenant: TenantId,
        new: NewChannel,
    ) -> Result<(Tx<Tenant>, Channel)> {
        let mut tx = self;
        let id = ChannelId::new();
        on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "INSERT INTO channel_directory (channel_id, tenant_id, provider, phone_number_id) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id.as_uuid())
            .bind(tenant.as_uuid())
            .bind(&new.provider)
            .bind(&new.phone_number_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| match db_error(e) {
            err if err.code() == ErrorCode::Conflict => Error::new(
                ErrorCode::Conflict,
                "this phone number id is already connected to a channel",
            ),
            err => err,
        })?;
        let mut tx = tx.enter_tenant(tenant).await?;
        let now = Timestamp::now();
        let verification = Verification::from_column(&new.provider, None);
        let channel = Channel {
            id,
            provider: new.provider,
            name: new.name,
            phone_number_id: new.phone_number_id,
            waba_id: new.waba_id,
            display_number: new.display_number,
            provider_account: new.provider_account,
            throughput_mps: new.throughput_mps,
            graph_api_base_url: new.graph_api_base_url,
            graph_api_version: new.graph_api_version,
            send_state: "active".into(),
            send_state_reason: None,
            verification,
            verification_reason: None,
            created_at: now,
        };
        let ch = &channel;
        on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "INSERT INTO channels (tenant_id, id, provider, name, phone_number_id, waba_id, \
                 display_number, throughput_mps, graph_api_base_url, graph_api_version, created_at, \
                 updated_at, provider_account) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)",
            )
            .bind(tenant.as_uuid())
            .bind(ch.id.as_uuid())
            .bind(&ch.provider)
            .bind(&ch.name)
            .bind(&ch.phone_number_id)
            .bind(&ch.waba_id)
            .bind(&ch.display_number)
            .bind(ch.throughput_mps)
            .bind(&ch.graph_api_base_url)
            .bind(&ch.graph_api_version)
            .bind(now.as_millis())
            .bind(&ch.provider_account)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok((tx, channel))
    }
}

/// A verified webhook body on its way into the inbox.
#[derive(Debug, Clone, Copy)]
pub struct IncomingWebhook<'a> {
    pub tenant: TenantId,
    pub channel: ChannelId,
    pub provider: &'a str,
    pub body: &'a [u8],
}

impl Store {
    /// Durably stores webhook bodies, of any tenants, together with the jobs that will process
    /// them (built per tenant by `jobs_for` from that tenant's new inbox ids) in one
    /// transaction: all are stored or none. This is ingestion's group commit. On PostgreSQL it
    /// is a single call of `waypost_ingest_webhooks` in its own implicit transaction, one round
    /// trip however many tenants the batch holds, where begin, inserts and commit per tenant
    /// cost four each and were most of the time a webhook took.
    pub async fn ingest_webhooks(
        &self,
        webhooks: &[IncomingWebhook<'_>],
        jobs_for: impl Fn(&[InboxId]) -> Result<Vec<NewJob>>,
    ) -> Result<()> {
        let mut by_tenant: BTreeMap<TenantId, Vec<&IncomingWebhook<'_>>> = BTreeMap::new();
        for webhook in webhooks {
            by_tenant.entry(webhook.tenant).or_default().push(webhook);
        }
        let Some(pool) = self.pg_pool() else {
            let Some(first) = by_tenant.keys().next() else {
                return Ok(());
            };
            let mut tx = self.tenant(*first).await?;
            for (tenant, items) in by_tenant {
                // SQLite has no session setting to change: the scope is all a tenant is here.
                tx.scope = Tenant(tenant);
                let rows: Vec<_> = items
                    .iter()
                    .map(|w| (w.channel, w.provider, w.body))
                    .collect();
                let ids = tx.store_webhooks(&rows).await?;
                tx.enqueue_many(jobs_for(&ids)?).await?;
            }
            return tx.commit().await;
        };
        let now = Timestamp::now().as_millis();
        let mut inbox = InboxColumns::default();
        let mut jobs = JobColumns::default();
        for (tenant, items) in by_tenant {
            let ids: Vec<InboxId> = items.iter().map(|_| InboxId::new()).collect();
            for (webhook, id) in items.iter().zip(&ids) {
                inbox.tenants.push(*tenant.as_uuid());
                inbox.ids.push(*id.as_uuid());
                inbox.channels.push(*webhook.channel.as_uuid());
                inbox.providers.push(webhook.provider);
                inbox.bodies.push(webhook.body);
            }
            for (id, job, dedupe_key, payload) in job_rows(Some(*tenant.as_uuid()), jobs_for(&ids)?)
            {
                jobs.tenants.push(*tenant.as_uuid());
                jobs.ids.push(id);
                jobs.run_at
                    .push(job.run_at.map_or(now, Timestamp::as_millis));
                jobs.max_attempts.push(i64::from(job.max_attempts));
                jobs.kinds.push(job.kind);
                jobs.payloads.push(payload);
                jobs.dedupe_keys.push(dedupe_key);
            }
        }
        sqlx::query(
            "SELECT waypost_ingest_webhooks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(now)
        .bind(inbox.tenants)
        .bind(inbox.ids)
        .bind(inbox.channels)
        .bind(inbox.providers)
        .bind(inbox.bodies)
        .bind(jobs.tenants)
        .bind(jobs.ids)
        .bind(jobs.kinds)
        .bind(jobs.payloads)
        .bind(jobs.run_at)
        .bind(jobs.max_attempts)
        .bind(jobs.dedupe_keys)
        .execute(pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

/// `waypost_ingest_webhooks`'s arguments: one array per column.
#[derive(Default)]
struct InboxColumns<'a> {
    tenants: Vec<Uuid>,
    ids: Vec<Uuid>,
    channels: Vec<Uuid>,
    providers: Vec<&'a str>,
    bodies: Vec<&'a [u8]>,
}

#[derive(Default)]
struct JobColumns {
    tenants: Vec<Uuid>,
    ids: Vec<Uuid>,
    kinds: Vec<String>,
    payloads: Vec<String>,
    run_at: Vec<i64>,
    max_attempts: Vec<i64>,
    dedupe_keys: Vec<Option<String>>,
}

/// An inbox entry, read to be processed. PostgreSQL locks the row, so processing and an
/// erasure that blanks the body take turns: a body read before its contact was erased cannot
/// bring the contact back. (SQLite's single writer already takes turns.)
macro_rules! inbox_entry_sql {
    ($lock:literal) => {
        concat!(
            "SELECT channel_id, provider, received_at, body, processed_at FROM webhook_inbox \
             WHERE tenant_id = $1 AND id = $2",
            $lock
        )
    };
}
const INBOX_ENTRY_SQLITE: &str = inbox_entry_sql!("");
const INBOX_ENTRY_POSTGRES: &str = inbox_entry_sql!(" FOR UPDATE");

impl Tx<Tenant> {
    /// Shows a verification's outcome on the channel (the routing side is
    /// `Tx<Platform>::set_route_verified`, in the same transaction).
    pub async fn set_verification(
        &mut self,
        channel: ChannelId,
        state: Verification,
        reason: Option<&str>,
    ) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE channels SET verification = $3, verification_reason = $4, updated_at = $5 \
                 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(state.as_str())
            .bind(reason)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn get_channel(&mut self, id: ChannelId) -> Result<Channel> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ChannelRow>(concat!(
                "SELECT ",
                channel_columns!(),
                " FROM channels WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?
        .map(Channel::from)
        .ok_or_else(|| Error::not_found("channel"))
    }

    pub async fn list_channels(
        &mut self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Channel>> {
        let tenant = self.tenant();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ChannelRow>(concat!(
                "SELECT ",
                channel_columns!(),
                " FROM channels WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .bind(tenant.as_uuid())
            .bind(after.map_or(Uuid::nil(), Cursor::id))
            .bind(i64::from(limit) + 1)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(Page::from_rows(
            rows.into_iter().map(Channel::from).collect(),
            limit,
            |c| *c.id.as_uuid(),
        ))
    }

    /// Stores a raw webhook body for later processing.
    pub async fn store_webhook(
        &mut self,
        channel: ChannelId,
        provider: &str,
        body: &[u8],
    ) -> Result<InboxId> {
        let ids = self.store_webhooks(&[(channel, provider, body)]).await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::internal("storing a webhook", "no id returned"))
    }

    /// Stores many raw webhook bodies with one multi-row INSERT (the group-commit path).
    pub async fn store_webhooks(
        &mut self,
        items: &[(ChannelId, &str, &[u8])],
    ) -> Result<Vec<InboxId>> {
        let tenant = *self.tenant().as_uuid();
        let now = Timestamp::now().as_millis();
        let ids: Vec<InboxId> = items.iter().map(|_| InboxId::new()).collect();
        if items.is_empty() {
            return Ok(ids);
        }
        let rows: Vec<_> = items.iter().zip(&ids).collect();
        on_conn!(&mut self.conn, |c| {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO webhook_inbox (tenant_id, id, channel_id, provider, received_at, body) ",
            );
            insert.push_values(&rows, |mut row, ((channel, provider, body), id)| {
                row.push_bind(tenant)
                    .push_bind(*id.as_uuid())
                    .push_bind(*channel.as_uuid())
                    .push_bind(provider.to_string())
                    .push_bind(now)
                    .push_bind(body.to_vec());
            });
            insert.build().execute(c).await.map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(ids)
    }

    pub async fn inbox_entry(&mut self, id: InboxId) -> Result<InboxEntry> {
        #[derive(sqlx::FromRow)]
        struct Row {
            channel_id: Uuid,
            provider: String,
            received_at: i64,
            body: Vec<u8>,
            processed_at: Option<i64>,
        }
        let tenant = self.tenant();
        let sql = match self.conn {
            Conn::Sqlite(_) => INBOX_ENTRY_SQLITE,
            Conn::Postgres(_) => INBOX_ENTRY_POSTGRES,
        };
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(sql)
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .fetch_optional(c)
                .await
        })
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("inbox entry"))?;
        Ok(InboxEntry {
            id,
            channel_id: ChannelId::from_uuid(row.channel_id),
            provider: row.provider,
            received_at: Timestamp::from_millis(row.received_at),
            body: row.body,
            processed_at: row.processed_at.map(Timestamp::from_millis),
        })
    }

    /// How many raw bodies the tenant's inbox holds.
    pub async fn count_inbox(&mut self) -> Result<i64> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_inbox WHERE tenant_id = $1")
                .bind(tenant.as_uuid())
                .fetch_one(c)
                .await
        })
        .map_err(db_error)
    }

    /// Deletes processed raw bodies received before `before`; unprocessed ones stay.
    pub async fn prune_inbox(&mut self, before: Timestamp) -> Result<u64> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "DELETE FROM webhook_inbox WHERE tenant_id = $1 AND received_at < $2 \
                 AND processed_at IS NOT NULL",
            )
            .bind(tenant.as_uuid())
            .bind(before.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    pub async fn mark_processed(&mut self, id: InboxId) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE webhook_inbox SET processed_at = $3 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Finds the contact by WhatsApp id or BSUID, filling in what was missing, or creates it.
    pub async fn upsert_contact(&mut self, who: &ContactIdentity) -> Result<ContactId> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let existing = on_conn!(&mut self.conn, |c| {
            // Two unique-index lookups, not one OR: a prepared statement's generic plan, chosen
            // while the table was small, turned the OR into a sequential scan that grew with
            // every contact (found by the dispatch benchmark). `= NULL` matches nothing.
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM (\
                 SELECT id, created_at FROM contacts WHERE tenant_id = $1 AND wa_id = $2 \
                 UNION ALL \
                 SELECT id, created_at FROM contacts WHERE tenant_id = $1 AND bsuid = $3\
                 ) AS found ORDER BY created_at LIMIT 1",
            )
            .bind(tenant.as_uuid())
            .bind(&who.wa_id)
            .bind(&who.bsuid)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        if let Some(id) = existing {
            on_conn!(&mut self.conn, |c| {
                sqlx::query(
                    "UPDATE contacts SET wa_id = COALESCE(wa_id, $3), bsuid = COALESCE(bsuid, $4), \
                     phone_e164 = COALESCE(phone_e164, $5), profile_name = COALESCE($6, profile_name), \
                     username = COALESCE($7, username), updated_at = $8 \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant.as_uuid())
                .bind(id)
                .bind(&who.wa_id)
                .bind(&who.bsuid)
                .bind(&who.phone_e164)
                .bind(&who.profile_name)
                .bind(&who.username)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
            return Ok(ContactId::from_uuid(id));
        }
        let id = ContactId::new();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO contacts (tenant_id, id, wa_id, bsuid, phone_e164, profile_name, username, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(&who.wa_id)
            .bind(&who.bsuid)
            .bind(&who.phone_e164)
            .bind(&who.profile_name)
            .bind(&who.username)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(id)
    }

    /// The conversation of a contact on a channel, created if new; an inbound message at
    /// `inbound_at` opens or extends the 24-hour window (never shortens it).
    pub async fn touch_conversation(
        &mut self,
        channel: ChannelId,
        contact: ContactId,
        inbound_at: Option<Timestamp>,
    ) -> Result<ConversationId> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let at = inbound_at.map(Timestamp::as_millis);
        // Checked: the instant comes from a webhook, and a wrapped sum would be a window
        // that closed before 1970 (or, saturated, one that never closes).
        let window = at
            .map(|a| {
                a.checked_add(SERVICE_WINDOW_MS).ok_or_else(|| {
                    Error::new(
                        ErrorCode::ValidationFailed,
                        "an inbound message's time is out of range",
                    )
                })
            })
            .transpose()?;
        let id = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO conversations (tenant_id, id, channel_id, contact_id, last_inbound_at, \
                 window_expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (tenant_id, channel_id, contact_id) DO UPDATE SET \
                 last_inbound_at = CASE WHEN conversations.last_inbound_at IS NULL \
                   OR conversations.last_inbound_at < $5 THEN $5 ELSE conversations.last_inbound_at END, \
                 window_expires_at = CASE WHEN conversations.window_expires_at IS NULL \
                   OR conversations.window_expires_at < $6 THEN $6 ELSE conversations.window_expires_at END, \
                 updated_at = $7 \
                 RETURNING id",
            )
            .bind(tenant.as_uuid())
            .bind(Uuid::now_v7())
            .bind(channel.as_uuid())
            .bind(contact.as_uuid())
            .bind(at)
            .bind(window)
            .bind(now)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        Ok(ConversationId::from_uuid(id))
    }

    /// Inserts an inbound message unless one with the same provider id exists (a retried
    /// webhook); then applies statuses that arrived before it. `None` for a duplicate.
    pub async fn insert_inbound_message(
        &mut self,
        m: NewInboundMessage,
    ) -> Result<Option<MessageId>> {
        let tenant = self.tenant();
        let id = MessageId::new();
        let inserted = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO messages (tenant_id, id, conversation_id, direction, provider_message_id, \
                 kind, content, referral, reply_to, sent_at, created_at) \
                 VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (tenant_id, provider_message_id) DO NOTHING",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(m.conversation_id.as_uuid())
            .bind(&m.provider_message_id)
            .bind(&m.kind)
            .bind(json_text(&m.content))
            .bind(m.referral.as_ref().map(json_text))
            .bind(&m.reply_to)
            .bind(m.sent_at.map(Timestamp::as_millis))
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if inserted == 0 {
            return Ok(None);
        }
        self.apply_pending_statuses(&m.provider_message_id).await?;
        Ok(Some(id))
    }

    pub(crate) async fn apply_pending_statuses(&mut self, provider_message_id: &str) -> Result<()> {
        #[derive(sqlx::FromRow)]
        struct Row {
            status: String,
            status_rank: i64,
            status_at: Option<i64>,
            error: Option<String>,
        }
        let tenant = self.tenant();
        let pending = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "DELETE FROM pending_statuses WHERE tenant_id = $1 AND provider_message_id = $2 \
                 RETURNING status, status_rank, status_at, error",
            )
            .bind(tenant.as_uuid())
            .bind(provider_message_id)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        for row in pending {
            self.apply_status(&StatusChange {
                provider_message_id: provider_message_id.to_string(),
                status: row.status,
                rank: row.status_rank,
                at: row.status_at.map(Timestamp::from_millis),
                error: parse_json(row.error)?,
            })
            .await?;
        }
        Ok(())
    }

    /// Moves a message's status forward; an older or repeated status changes nothing; a status
    /// for an unknown message is kept until the message arrives.
    pub async fn apply_status(&mut self, change: &StatusChange) -> Result<StatusOutcome> {
        let tenant = self.tenant();
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET status = $3, status_rank = $4, status_at = $5, \
                 error = COALESCE($6, error) \
                 WHERE tenant_id = $1 AND provider_message_id = $2 AND status_rank < $4",
            )
            .bind(tenant.as_uuid())
            .bind(&change.provider_message_id)
            .bind(&change.status)
            .bind(change.rank)
            .bind(change.at.map(Timestamp::as_millis))
            .bind(change.error.as_ref().map(json_text))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if updated == 1 {
            return Ok(StatusOutcome::Applied);
        }
        let exists = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM messages WHERE tenant_id = $1 AND provider_message_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(&change.provider_message_id)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        if exists > 0 {
            return Ok(StatusOutcome::Stale);
        }
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO pending_statuses (tenant_id, provider_message_id, status, status_rank, \
                 status_at, error, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant_id, provider_message_id, status) DO NOTHING",
            )
            .bind(tenant.as_uuid())
            .bind(&change.provider_message_id)
            .bind(&change.status)
            .bind(change.rank)
            .bind(change.at.map(Timestamp::as_millis))
            .bind(change.error.as_ref().map(json_text))
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(StatusOutcome::Pending)
    }

    pub async fn record_channel_event(
        &mut self,
        channel: ChannelId,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO channel_events (tenant_id, id, channel_id, kind, payload, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant.as_uuid())
            .bind(Uuid::now_v7())
            .bind(channel.as_uuid())
            .bind(kind)
            .bind(json_text(payload))
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Conversations, newest first by creation (id order reversed would need another cursor;
    /// ascending id keeps the cursor simple and stable).
    pub async fn list_conversations(
        &mut self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Conversation>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            channel_id: Uuid,
            contact_id: Uuid,
            profile_name: Option<String>,
            wa_id: Option<String>,
            bsuid: Option<String>,
            last_inbound_at: Option<i64>,
            window_expires_at: Option<i64>,
            created_at: i64,
        }
        let tenant = self.tenant();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT v.id, v.channel_id, v.contact_id, k.profile_name, k.wa_id, k.bsuid, \
                 v.last_inbound_at, v.window_expires_at, v.created_at \
                 FROM conversations v JOIN contacts k ON k.tenant_id = v.tenant_id AND k.id = v.contact_id \
                 WHERE v.tenant_id = $1 AND v.id > $2 ORDER BY v.id LIMIT $3",
            )
            .bind(tenant.as_uuid())
            .bind(after.map_or(Uuid::nil(), Cursor::id))
            .bind(i64::from(limit) + 1)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        let conversations = rows
            .into_iter()
            .map(|r| Conversation {
                id: ConversationId::from_uuid(r.id),
                channel_id: ChannelId::from_uuid(r.channel_id),
                contact_id: ContactId::from_uuid(r.contact_id),
                contact_name: r.profile_name,
                contact_wa_id: r.wa_id,
                contact_bsuid: r.bsuid,
                last_inbound_at: r.last_inbound_at.map(Timestamp::from_millis),
                window_expires_at: r.window_expires_at.map(Timestamp::from_millis),
                created_at: Timestamp::from_millis(r.created_at),
            })
            .collect();
        Ok(Page::from_rows(conversations, limit, |c| *c.id.as_uuid()))
    }

    /// A conversation's messages in order; `NotFound` for another tenant's conversation.
    pub async fn list_messages(
        &mut self,
        conversation: ConversationId,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<StoredMessage>> {
        let tenant = self.tenant();
        let exists = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM conversations WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(conversation.as_uuid())
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        if exists == 0 {
            return Err(Error::not_found("conversation"));
        }
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, MessageRow>(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND id > $3 \
                     ORDER BY id LIMIT $4"
            ))
            .bind(tenant.as_uuid())
            .bind(conversation.as_uuid())
            .bind(after.map_or(Uuid::nil(), Cursor::id))
            .bind(i64::from(limit) + 1)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        let messages = rows
            .into_iter()
            .map(StoredMessage::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(messages, limit, |m| *m.id.as_uuid()))
    }
}
