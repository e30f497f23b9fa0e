//! The send side: outbound messages with their outbox rows, idempotency keys, the per-channel
//! dispatcher lease and each channel's send state.
//!
//! A message and its outbox row are written in one transaction. The channel's dispatcher (the
//! lease holder) claims rows, recording the attempt *before* it calls the provider, then
//! records the outcome. A row still `in_flight` when its holder died is never sent again: the
//! message becomes `unknown` until a status webhook echoing its id reconciles it.

use serde_json::Value;
use uuid::Uuid;
use waypost_core::{
    ChannelId, ContactId, ConversationId, Error, ErrorCode, MessageId, Result, TenantId, Timestamp,
};

use crate::{
    connect::db_error,
    inbound::{ChannelRoute, MessageRow, StoredMessage, json_text, message_columns},
    tx::{Platform, Tenant, Tx, on_conn},
};

/// API sends (replies, notifications) go before bulk traffic on the same channel.
pub const LANE_TRANSACTIONAL: i64 = 0;
pub const LANE_BULK: i64 = 1;

/// How long an `Idempotency-Key` keeps answering with its first message.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The status rank of `failed` (see `DeliveryStatus::rank`): terminal.
const FAILED_RANK: i64 = 5;

pub struct NewOutboundMessage {
    pub channel_id: ChannelId,
    pub conversation_id: ConversationId,
    pub recipient: String,
    pub kind: String,
    /// The provider-neutral message, as shown in the conversation.
    pub content: Value,
    /// What the dispatcher needs to send it (kept only until it is sent).
    pub payload: Value,
    pub reply_to: Option<String>,
    /// `marketing`, `utility`, `authentication` or `service`.
    pub category: String,
    pub lane: i64,
    /// The caller's `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// A claimed outbox row: its attempt is already recorded.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub message_id: MessageId,
    pub recipient: String,
    pub lane: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub payload: Value,
}

/// What an attempt came to.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// The provider took the message and named it.
    Accepted { provider_message_id: String },
    /// It will never be sent.
    Failed { error: Value },
    /// The provider refused it for now (limits, outages): back to the queue.
    Retry { not_before: Timestamp, error: Value },
    /// The request may or may not have reached the provider: never resent blindly.
    Unknown { error: Value },
}

impl Tx<Tenant> {
    /// The message an `Idempotency-Key` created in the last 24 hours, with its request hash.
    pub async fn idempotent_message(&mut self, key: &str) -> Result<Option<(String, MessageId)>> {
        let tenant = self.tenant();
        let since = Timestamp::now().as_millis() - IDEMPOTENCY_WINDOW_MS;
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (String, Uuid)>(
                "SELECT request_hash, message_id FROM idempotency_keys \
                 WHERE tenant_id = $1 AND key = $2 AND created_at > $3",
            )
            .bind(tenant.as_uuid())
            .bind(key)
            .bind(since)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(|(hash, id)| (hash, MessageId::from_uuid(id))))
    }

    /// Deletes idempotency keys older than their 24 hours (they answer nothing any more).
    pub async fn prune_idempotency_keys(&mut self) -> Result<u64> {
        let tenant = self.tenant();
        let before = Timestamp::now().as_millis() - IDEMPOTENCY_WINDOW_MS;
        on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND created_at <= $2")
                .bind(tenant.as_uuid())
                .bind(before)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    /// Writes a queued outbound message and its outbox row (and idempotency key) together.
    pub async fn insert_outbound_message(&mut self, m: NewOutboundMessage) -> Result<MessageId> {
        let tenant = self.tenant();
        let id = MessageId::new();
        let now = Timestamp::now().as_millis();
        let content = json_text(&m.content);
        if let Some((key, hash)) = &m.idempotency {
            // An expired key is replaced; a live one is a conflict the caller resolves.
            on_conn!(&mut self.conn, |c| {
                sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND created_at <= $3")
                    .bind(tenant.as_uuid())
                    .bind(key)
                    .bind(now - IDEMPOTENCY_WINDOW_MS)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
            on_conn!(&mut self.conn, |c| {
                sqlx::query(
                    "INSERT INTO idempotency_keys (tenant_id, key, request_hash, message_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(tenant.as_uuid())
                .bind(key)
                .bind(hash)
                .bind(id.as_uuid())
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
        }
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO messages (tenant_id, id, conversation_id, direction, recipient, category, \
                 kind, content, reply_to, status, status_rank, status_at, created_at) \
                 VALUES ($1, $2, $3, 'outbound', $4, $5, $6, $7, $8, 'queued', 0, $9, $9)",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(m.conversation_id.as_uuid())
            .bind(&m.recipient)
            .bind(&m.category)
            .bind(&m.kind)
            .bind(&content)
            .bind(&m.reply_to)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO outbox (tenant_id, message_id, channel_id, lane, recipient, payload, state, \
                 not_before, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(m.channel_id.as_uuid())
            .bind(m.lane)
            .bind(&m.recipient)
            .bind(json_text(&m.payload))
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(id)
    }

    pub async fn get_message(&mut self, id: MessageId) -> Result<StoredMessage> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, MessageRow>(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        row.ok_or_else(|| Error::not_found("message"))?.try_into()
    }

    /// Claims up to `limit` ready rows of a channel for `attempt_owner` and records the
    /// attempt, but only while `lease_owner` holds the channel's dispatch lease (a process
    /// that lost its lease claims nothing). Transactional rows come first.
    pub async fn claim_outbox(
        &mut self,
        channel: ChannelId,
        lease_owner: &str,
        attempt_owner: &str,
        limit: u32,
    ) -> Result<Vec<OutboxItem>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            message_id: Uuid,
            recipient: String,
            lane: i64,
            attempts: i64,
            payload: String,
        }
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1, attempt_owner = $3, \
                 attempt_started_at = $4 \
                 WHERE tenant_id = $1 AND state = 'pending' AND message_id IN ( \
                   SELECT message_id FROM outbox WHERE tenant_id = $1 AND channel_id = $2 \
                   AND state = 'pending' AND not_before <= $4 \
                   ORDER BY lane, not_before, message_id LIMIT $5) \
                 AND EXISTS (SELECT 1 FROM channel_directory d WHERE d.channel_id = $2 \
                   AND d.dispatch_owner = $6 AND d.dispatch_until > $4) \
                 RETURNING message_id, recipient, lane, attempts, payload",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(attempt_owner)
            .bind(now)
            .bind(i64::from(limit))
            .bind(lease_owner)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET status = 'sending', status_at = $4 WHERE tenant_id = $1 \
                 AND status_rank = 0 AND id IN (SELECT message_id FROM outbox WHERE tenant_id = $1 \
                 AND channel_id = $2 AND attempt_owner = $3 AND attempt_started_at = $4)",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(attempt_owner)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        let mut items = rows
            .into_iter()
            .map(|r| {
                Ok(OutboxItem {
                    message_id: MessageId::from_uuid(r.message_id),
                    recipient: r.recipient,
                    lane: r.lane,
                    attempts: r.attempts,
                    payload: serde_json::from_str(&r.payload)
                        .map_err(|e| Error::internal("stored outbox payload", e))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        items.sort_by_key(|i| (i.lane, i.message_id));
        Ok(items)
    }

    /// Records what attempts came to. A message a status webhook already reconciled keeps
    /// its newer status.
    pub async fn record_send_outcomes(
        &mut self,
        outcomes: &[(MessageId, SendOutcome)],
    ) -> Result<()> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        // In id order, locked first: status processing takes message locks in the same order,
        // so the two never wait on each other in a cycle.
        self.lock_messages(outcomes.iter().map(|(id, _)| *id.as_uuid()))
            .await?;
        let mut outcomes: Vec<&(MessageId, SendOutcome)> = outcomes.iter().collect();
        outcomes.sort_by_key(|(id, _)| *id);
        for (id, outcome) in outcomes {
            let (status, rank, error, provider_id, sent_at) = match outcome {
                SendOutcome::Accepted {
                    provider_message_id,
                } => ("accepted", 0, None, Some(provider_message_id), Some(now)),
                SendOutcome::Failed { error } => ("failed", FAILED_RANK, Some(error), None, None),
                SendOutcome::Unknown { error } => ("unknown", 0, Some(error), None, None),
                SendOutcome::Retry { not_before, error } => {
                    self.requeue(*id, *not_before, error).await?;
                    continue;
                }
            };
            let error = error.map(json_text);
            on_conn!(&mut self.conn, |c| {
                sqlx::query(
                    "UPDATE messages SET status = $3, status_rank = $4, status_at = $5, \
                     error = COALESCE($6, error), provider_message_id = COALESCE(provider_message_id, $7), \
                     sent_at = COALESCE(sent_at, $8) \
                     WHERE tenant_id = $1 AND id = $2 AND status_rank = 0",
                )
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .bind(status)
                .bind(rank)
                .bind(now)
                .bind(&error)
                .bind(provider_id)
                .bind(sent_at)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
            self.delete_outbox_row(*id).await?;
            if let Some(provider_id) = provider_id {
                self.apply_pending_statuses(provider_id).await?;
            }
        }
        Ok(())
    }

    async fn requeue(&mut self, id: MessageId, not_before: Timestamp, error: &Value) -> Result<()> {
        let tenant = self.tenant();
        let error = json_text(error);
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE outbox SET state = 'pending', not_before = $3, attempt_owner = NULL \
                 WHERE tenant_id = $1 AND message_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(not_before.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET status = 'queued', error = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND status_rank = 0",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(&error)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    async fn delete_outbox_row(&mut self, id: MessageId) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM outbox WHERE tenant_id = $1 AND message_id = $2")
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Attempts another process started on this channel and never finished (it died or lost
    /// its lease): their outcome is unknown, so they are reported as such, not resent.
    pub async fn recover_in_flight(&mut self, channel: ChannelId, owner: &str) -> Result<u64> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let error = json_text(&serde_json::json!({
            "code": "outcome_unknown",
            "message": "the dispatcher stopped while sending; waiting for the provider's status",
        }));
        let marked = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET status = 'unknown', status_at = $4, error = $5 \
                 WHERE tenant_id = $1 AND status_rank = 0 AND id IN (SELECT message_id FROM outbox \
                 WHERE tenant_id = $1 AND channel_id = $2 AND state = 'in_flight' AND attempt_owner <> $3)",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(owner)
            .bind(now)
            .bind(&error)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "DELETE FROM outbox WHERE tenant_id = $1 AND channel_id = $2 AND state = 'in_flight' \
                 AND attempt_owner <> $3",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(owner)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(marked)
    }

    /// Unknown outcomes no status reconciled by `before` become failures (never resent).
    pub async fn expire_unknown(&mut self, channel: ChannelId, before: Timestamp) -> Result<u64> {
        let tenant = self.tenant();
        let error = json_text(&serde_json::json!({
            "code": "outcome_unknown",
            "message": "the provider never confirmed this message; it was not resent to avoid a duplicate",
        }));
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET status = 'failed', status_rank = $4, status_at = $5, error = $6 \
                 WHERE tenant_id = $1 AND status = 'unknown' AND status_at < $3 AND conversation_id IN \
                 (SELECT id FROM conversations WHERE tenant_id = $1 AND channel_id = $2)",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(before.as_millis())
            .bind(FAILED_RANK)
            .bind(Timestamp::now().as_millis())
            .bind(&error)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    /// A status webhook echoed our message id in `biz_opaque_callback_data`: gives the
    /// message its provider id if it has none yet (an unknown or unrecorded attempt), drops
    /// its outbox row, since it evidently reached the provider, and applies the statuses that
    /// were waiting for that id.
    pub async fn reconcile_outbound(
        &mut self,
        id: MessageId,
        provider_message_id: &str,
    ) -> Result<bool> {
        let tenant = self.tenant();
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE messages SET provider_message_id = $3, \
                 status = CASE WHEN status_rank = 0 THEN 'accepted' ELSE status END, \
                 error = CASE WHEN status = 'unknown' THEN NULL ELSE error END \
                 WHERE tenant_id = $1 AND id = $2 AND direction = 'outbound' \
                 AND provider_message_id IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(provider_message_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if updated == 1 {
            self.delete_outbox_row(id).await?;
            self.apply_pending_statuses(provider_message_id).await?;
        }
        Ok(updated == 1)
    }

    /// When a conversation's customer-service window closes (`None`: never opened).
    pub async fn conversation_window(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Option<Timestamp>> {
        let tenant = self.tenant();
        let at = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT window_expires_at FROM conversations WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(conversation.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(at.flatten().map(Timestamp::from_millis))
    }

    /// Outbound messages of a channel by status (for dashboards and benchmarks).
    pub async fn outbound_status_counts(
        &mut self,
        channel: ChannelId,
    ) -> Result<Vec<(String, i64)>> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT COALESCE(m.status, ''), COUNT(*) FROM messages m JOIN conversations v \
                 ON v.tenant_id = m.tenant_id AND v.id = m.conversation_id \
                 WHERE m.tenant_id = $1 AND v.channel_id = $2 AND m.direction = 'outbound' \
                 GROUP BY m.status ORDER BY 1",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .fetch_all(c)
            .await
        })
        .map_err(db_error)
    }

    /// The channel and contact of a message (through its conversation).
    pub async fn message_route(&mut self, id: MessageId) -> Result<(ChannelId, ContactId)> {
        let tenant = self.tenant();
        let route = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "SELECT v.channel_id, v.contact_id FROM messages m JOIN conversations v \
                 ON v.tenant_id = m.tenant_id AND v.id = m.conversation_id \
                 WHERE m.tenant_id = $1 AND m.id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        route
            .map(|(channel, contact)| {
                (ChannelId::from_uuid(channel), ContactId::from_uuid(contact))
            })
            .ok_or_else(|| Error::not_found("message"))
    }

    /// Holds or releases a channel's sending (`active`, `paused`, `credentials_invalid`).
    pub async fn set_send_state(
        &mut self,
        channel: ChannelId,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        if !matches!(state, "active" | "paused" | "credentials_invalid") {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("unknown send state {state}"),
            ));
        }
        let tenant = self.tenant();
        let changed = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE channels SET send_state = $3, send_state_reason = $4, send_state_at = $5, \
                 updated_at = $5 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(state)
            .bind(reason)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if changed == 0 {
            return Err(Error::not_found("channel"));
        }
        Ok(())
    }
}

impl Tx<Platform> {
    /// Renews this owner's channel leases and takes every free or expired one. A lease not
    /// returned is no longer held: its dispatcher must stop.
    pub async fn acquire_dispatch_leases(
        &mut self,
        owner: &str,
        until: Timestamp,
    ) -> Result<Vec<ChannelRoute>> {
        let now = Timestamp::now().as_millis();
        let renewed = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "UPDATE channel_directory SET dispatch_until = $2 WHERE dispatch_owner = $1 \
                 RETURNING channel_id, tenant_id",
            )
            .bind(owner)
            .bind(until.as_millis())
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        let taken = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, (Uuid, Uuid)>(
                "UPDATE channel_directory SET dispatch_owner = $1, dispatch_until = $2 \
                 WHERE dispatch_owner IS NULL OR dispatch_until < $3 \
                 RETURNING channel_id, tenant_id",
            )
            .bind(owner)
            .bind(until.as_millis())
            .bind(now)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(renewed
            .into_iter()
            .chain(taken)
            .map(|(channel, tenant)| ChannelRoute {
                tenant: TenantId::from_uuid(tenant),
                channel: ChannelId::from_uuid(channel),
            })
            .collect())
    }

    /// Gives up this owner's leases (on shutdown) so another process takes over at once.
    pub async fn release_dispatch_leases(&mut self, owner: &str) -> Result<u64> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE channel_directory SET dispatch_owner = NULL, dispatch_until = NULL \
                 WHERE dispatch_owner = $1",
            )
            .bind(owner)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }
}
