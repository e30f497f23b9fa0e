//! Set-based writes for inbound processing: a batch of webhooks costs a handful of statements,
//! whatever its size, and every batch takes its row locks in one global order — inbox rows,
//! then contacts, then conversations, then messages, each by key — so concurrent processors
//! (and the dispatcher recording send outcomes, which locks messages by id too) can wait on
//! each other briefly but never in a cycle. Rows that would not change are not written.
//!
//! Statements are built per batch (their size varies), so they are not kept as prepared
//! statements (`persistent(false)`): a batch of hundreds of rows pays one parse, not one
//! round trip per row.

use std::collections::{BTreeMap, HashMap};

use sqlx::QueryBuilder;
use uuid::Uuid;
use waypost_core::{ChannelId, ContactId, ConversationId, InboxId, MessageId, Result, Timestamp};

use crate::{
    ContactIdentity, InboxEntry, NewInboundMessage, StatusChange, StatusOutcome,
    connect::db_error,
    inbound::{SERVICE_WINDOW_MS, json_text},
    tx::{Conn, Tenant, Tx, on_conn},
};

/// `column IN ($a, $b, ...)` over `values`.
fn push_in<DB: sqlx::Database, T>(
    query: &mut QueryBuilder<DB>,
    column: &str,
    values: impl IntoIterator<Item = T>,
) where
    T: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    query.push(format!(" {column} IN ("));
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    list.push_unseparated(")");
}

#[derive(sqlx::FromRow)]
struct InboxRow {
    id: Uuid,
    channel_id: Uuid,
    provider: String,
    received_at: i64,
    body: Vec<u8>,
}

#[derive(sqlx::FromRow, Clone)]
struct ContactRow {
    id: Uuid,
    wa_id: Option<String>,
    bsuid: Option<String>,
    phone_e164: Option<String>,
    profile_name: Option<String>,
    username: Option<String>,
    created_at: i64,
}

impl ContactRow {
    fn matches(&self, who: &ContactIdentity) -> bool {
        (who.wa_id.is_some() && self.wa_id == who.wa_id)
            || (who.bsuid.is_some() && self.bsuid == who.bsuid)
    }

    /// What the contact becomes with `who` merged in: missing identifiers filled, names taken
    /// from the latest message.
    fn merged(&self, who: &ContactIdentity) -> ContactRow {
        ContactRow {
            wa_id: self.wa_id.clone().or_else(|| who.wa_id.clone()),
            bsuid: self.bsuid.clone().or_else(|| who.bsuid.clone()),
            phone_e164: self.phone_e164.clone().or_else(|| who.phone_e164.clone()),
            profile_name: who
                .profile_name
                .clone()
                .or_else(|| self.profile_name.clone()),
            username: who.username.clone().or_else(|| self.username.clone()),
            ..self.clone()
        }
    }

    fn same_as(&self, other: &ContactRow) -> bool {
        (
            &self.wa_id,
            &self.bsuid,
            &self.phone_e164,
            &self.profile_name,
            &self.username,
        ) == (
            &other.wa_id,
            &other.bsuid,
            &other.phone_e164,
            &other.profile_name,
            &other.username,
        )
    }
}

/// Contacts as a batch sees them: those found, those changed, those to create.
#[derive(Default)]
struct ContactPlan {
    known: Vec<ContactRow>,
    changed: BTreeMap<Uuid, ContactRow>,
    created: BTreeMap<Uuid, ContactRow>,
}

impl ContactPlan {
    /// The contact `who` is, merged into the plan: the earliest known match, else one this
    /// batch creates.
    fn resolve(&mut self, who: &ContactIdentity, now: i64) -> Uuid {
        let found = self
            .known
            .iter()
            .chain(self.changed.values())
            .filter(|c| c.matches(who))
            .min_by_key(|c| (c.created_at, c.id))
            .cloned();
        if let Some(current) = found {
            let current = self.changed.get(&current.id).cloned().unwrap_or(current);
            let merged = current.merged(who);
            if !merged.same_as(&current) {
                self.changed.insert(merged.id, merged);
            }
            return current.id;
        }
        if let Some(new) = self.created.values_mut().find(|c| c.matches(who)) {
            *new = new.merged(who);
            return new.id;
        }
        let id = *ContactId::new().as_uuid();
        let blank = ContactRow {
            id,
            wa_id: None,
            bsuid: None,
            phone_e164: None,
            profile_name: None,
            username: None,
            created_at: now,
        };
        self.created.insert(id, blank.merged(who));
        id
    }
}

impl Tx<Tenant> {
    /// The unprocessed entries among `ids`, in id order. On PostgreSQL they are locked, so a
    /// concurrent erasure or a duplicate job waits for this batch instead of racing it.
    pub async fn unprocessed_inbox(&mut self, ids: &[InboxId]) -> Result<Vec<InboxEntry>> {
        let lock = match self.conn {
            Conn::Sqlite(_) => "",
            Conn::Postgres(_) => " FOR UPDATE",
        };
        self.select_unprocessed(ids, lock).await
    }

    /// The unprocessed entries among `ids`, unlocked (in a read transaction): to parse them
    /// before the write transaction that processes them, which checks them again.
    pub async fn peek_unprocessed_inbox(&mut self, ids: &[InboxId]) -> Result<Vec<InboxEntry>> {
        self.select_unprocessed(ids, "").await
    }

    async fn select_unprocessed(&mut self, ids: &[InboxId], lock: &str) -> Result<Vec<InboxEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = *self.tenant().as_uuid();
        let rows = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "SELECT id, channel_id, provider, received_at, body FROM webhook_inbox \
                 WHERE processed_at IS NULL AND tenant_id = ",
            );
            q.push_bind(tenant).push(" AND");
            push_in(&mut q, "id", ids.iter().map(|i| *i.as_uuid()));
            q.push(" ORDER BY id").push(lock);
            q.build_query_as::<InboxRow>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| InboxEntry {
                id: InboxId::from_uuid(r.id),
                channel_id: ChannelId::from_uuid(r.channel_id),
                provider: r.provider,
                received_at: Timestamp::from_millis(r.received_at),
                body: r.body,
                processed_at: None,
            })
            .collect())
    }

    pub async fn mark_inbox_processed(&mut self, ids: &[InboxId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tenant = *self.tenant().as_uuid();
        let now = Timestamp::now().as_millis();
        on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new("UPDATE webhook_inbox SET processed_at = ");
            q.push_bind(now)
                .push(" WHERE tenant_id = ")
                .push_bind(tenant)
                .push(" AND");
            push_in(&mut q, "id", ids.iter().map(|i| *i.as_uuid()));
            q.build()
                .persistent(false)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Finds or creates the contact of each identity (by WhatsApp id or BSUID, filling in
    /// what was missing), in input order. A returning contact whose details did not change is
    /// only read, never written: a customer who writes often takes no row lock.
    pub async fn upsert_contacts(&mut self, who: &[ContactIdentity]) -> Result<Vec<ContactId>> {
        if who.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now().as_millis();
        let mut plan = ContactPlan {
            known: self.find_contacts(who).await?,
            ..ContactPlan::default()
        };
        let ids: Vec<Uuid> = who.iter().map(|w| plan.resolve(w, now)).collect();
        for row in plan.changed.values() {
            self.update_contact_row(row, now).await?;
        }
        let lost = self.insert_contact_rows(&plan.created, now).await?;
        if lost.is_empty() {
            return Ok(ids.into_iter().map(ContactId::from_uuid).collect());
        }
        // Another transaction created some of these contacts first: use theirs.
        let mut retry = Vec::with_capacity(who.len());
        for (w, id) in who.iter().zip(&ids) {
            retry.push(if lost.contains(id) {
                self.upsert_contact(w).await?
            } else {
                ContactId::from_uuid(*id)
            });
        }
        Ok(retry)
    }

    async fn find_contacts(&mut self, who: &[ContactIdentity]) -> Result<Vec<ContactRow>> {
        let tenant = *self.tenant().as_uuid();
        let wa_ids: Vec<String> = who.iter().filter_map(|w| w.wa_id.clone()).collect();
        let bsuids: Vec<String> = who.iter().filter_map(|w| w.bsuid.clone()).collect();
        let mut found = Vec::new();
        for (column, keys) in [("wa_id", wa_ids), ("bsuid", bsuids)] {
            if keys.is_empty() {
                continue;
            }
            let rows = on_conn!(&mut self.conn, |c| {
                let mut q = QueryBuilder::new(
                    "SELECT id, wa_id, bsuid, phone_e164, profile_name, username, created_at \
                     FROM contacts WHERE tenant_id = ",
                );
                q.push_bind(tenant).push(" AND");
                push_in(&mut q, column, keys.iter().cloned());
                q.build_query_as::<ContactRow>()
                    .persistent(false)
                    .fetch_all(c)
                    .await
            })
            .map_err(db_error)?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn update_contact_row(&mut self, row: &ContactRow, now: i64) -> Result<()> {
        let tenant = *self.tenant().as_uuid();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE contacts SET wa_id = $3, bsuid = $4, phone_e164 = $5, profile_name = $6, \
                 username = $7, updated_at = $8 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(row.id)
            .bind(&row.wa_id)
            .bind(&row.bsuid)
            .bind(&row.phone_e164)
            .bind(&row.profile_name)
            .bind(&row.username)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Inserts new contacts; the ids that lost a race to another transaction's insert.
    async fn insert_contact_rows(
        &mut self,
        rows: &BTreeMap<Uuid, ContactRow>,
        now: i64,
    ) -> Result<Vec<Uuid>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = *self.tenant().as_uuid();
        let inserted: Vec<Uuid> = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "INSERT INTO contacts (tenant_id, id, wa_id, bsuid, phone_e164, profile_name, \
                 username, created_at, updated_at) ",
            );
            q.push_values(rows.values(), |mut row, r| {
                row.push_bind(tenant)
                    .push_bind(r.id)
                    .push_bind(r.wa_id.clone())
                    .push_bind(r.bsuid.clone())
                    .push_bind(r.phone_e164.clone())
                    .push_bind(r.profile_name.clone())
                    .push_bind(r.username.clone())
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING id");
            q.build_query_scalar::<Uuid>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        Ok(rows
            .keys()
            .filter(|id| !inserted.contains(id))
            .copied()
            .collect())
    }

    /// Opens or extends the conversation of each (channel, contact) with an inbound message
    /// at the given time (the window never shortens); conversation ids in input order.
    pub async fn touch_conversations(
        &mut self,
        touches: &[(ChannelId, ContactId, Timestamp)],
    ) -> Result<Vec<ConversationId>> {
        let mut latest: BTreeMap<(ChannelId, ContactId), i64> = BTreeMap::new();
        for (channel, contact, at) in touches {
            let at = at.as_millis();
            let slot = latest.entry((*channel, *contact)).or_insert(at);
            *slot = (*slot).max(at);
        }
        if latest.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = *self.tenant().as_uuid();
        let now = Timestamp::now().as_millis();
        // Sorted by key: every batch locks conversations in the same order.
        let rows = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "INSERT INTO conversations (tenant_id, id, channel_id, contact_id, last_inbound_at, \
                 window_expires_at, created_at, updated_at) ",
            );
            q.push_values(&latest, |mut row, ((channel, contact), at)| {
                row.push_bind(tenant)
                    .push_bind(Uuid::now_v7())
                    .push_bind(*channel.as_uuid())
                    .push_bind(*contact.as_uuid())
                    .push_bind(*at)
                    .push_bind(at.saturating_add(SERVICE_WINDOW_MS))
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(
                " ON CONFLICT (tenant_id, channel_id, contact_id) DO UPDATE SET \
                 last_inbound_at = CASE WHEN conversations.last_inbound_at IS NULL \
                   OR conversations.last_inbound_at < excluded.last_inbound_at \
                   THEN excluded.last_inbound_at ELSE conversations.last_inbound_at END, \
                 window_expires_at = CASE WHEN conversations.window_expires_at IS NULL \
                   OR conversations.window_expires_at < excluded.window_expires_at \
                   THEN excluded.window_expires_at ELSE conversations.window_expires_at END, \
                 updated_at = excluded.updated_at RETURNING id, channel_id, contact_id",
            );
            q.build_query_as::<(Uuid, Uuid, Uuid)>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        let by_key: HashMap<(Uuid, Uuid), Uuid> = rows
            .into_iter()
            .map(|(id, channel, contact)| ((channel, contact), id))
            .collect();
        touches
            .iter()
            .map(|(channel, contact, _)| {
                by_key
                    .get(&(*channel.as_uuid(), *contact.as_uuid()))
                    .map(|id| ConversationId::from_uuid(*id))
                    .ok_or_else(|| {
                        waypost_core::Error::internal("touching conversations", "a row is missing")
                    })
            })
            .collect()
    }

    /// Inserts inbound messages, skipping those already stored (a retried webhook) or
    /// repeated in the batch; each message's id, `None` for a duplicate. Statuses that arrived
    /// before their message are applied.
    pub async fn insert_inbound_messages(
        &mut self,
        messages: &[NewInboundMessage],
    ) -> Result<Vec<Option<MessageId>>> {
        let mut first: BTreeMap<&str, (usize, Uuid)> = BTreeMap::new();
        for (n, m) in messages.iter().enumerate() {
            first
                .entry(m.provider_message_id.as_str())
                .or_insert((n, *MessageId::new().as_uuid()));
        }
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = *self.tenant().as_uuid();
        let now = Timestamp::now().as_millis();
        let inserted: Vec<Uuid> = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "INSERT INTO messages (tenant_id, id, conversation_id, direction, \
                 provider_message_id, kind, content, referral, reply_to, sent_at, created_at) ",
            );
            q.push_values(first.values(), |mut row, (n, id)| {
                let m = &messages[*n];
                row.push_bind(tenant)
                    .push_bind(*id)
                    .push_bind(*m.conversation_id.as_uuid())
                    .push_bind("inbound")
                    .push_bind(m.provider_message_id.clone())
                    .push_bind(m.kind.clone())
                    .push_bind(json_text(&m.content))
                    .push_bind(m.referral.as_ref().map(json_text))
                    .push_bind(m.reply_to.clone())
                    .push_bind(m.sent_at.map(Timestamp::as_millis))
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (tenant_id, provider_message_id) DO NOTHING RETURNING id");
            q.build_query_scalar::<Uuid>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        let mut ids = vec![None; messages.len()];
        let mut new_provider_ids = Vec::new();
        for (provider_id, (n, id)) in &first {
            if inserted.contains(id) {
                ids[*n] = Some(MessageId::from_uuid(*id));
                new_provider_ids.push((*provider_id).to_string());
            }
        }
        let early = self.take_pending_statuses(&new_provider_ids).await?;
        self.apply_statuses(&early).await?;
        Ok(ids)
    }

    /// Removes and returns the statuses that waited for these messages.
    async fn take_pending_statuses(
        &mut self,
        provider_ids: &[String],
    ) -> Result<Vec<StatusChange>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            provider_message_id: String,
            status: String,
            status_rank: i64,
            status_at: Option<i64>,
            error: Option<String>,
        }
        if provider_ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = *self.tenant().as_uuid();
        let rows = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new("DELETE FROM pending_statuses WHERE tenant_id = ");
            q.push_bind(tenant).push(" AND");
            push_in(&mut q, "provider_message_id", provider_ids.iter().cloned());
            q.push(" RETURNING provider_message_id, status, status_rank, status_at, error");
            q.build_query_as::<Row>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(StatusChange {
                    provider_message_id: r.provider_message_id,
                    status: r.status,
                    rank: r.status_rank,
                    at: r.status_at.map(Timestamp::from_millis),
                    error: crate::inbound::parse_json(r.error)?,
                })
            })
            .collect()
    }

    /// Moves messages' statuses forward, a batch at once; each change's outcome in input
    /// order. Several changes for one message count as its highest; an older or repeated
    /// status changes nothing; a status for an unknown message waits for it.
    pub async fn apply_statuses(&mut self, changes: &[StatusChange]) -> Result<Vec<StatusOutcome>> {
        let mut best: BTreeMap<&str, &StatusChange> = BTreeMap::new();
        for change in changes {
            let slot = best
                .entry(change.provider_message_id.as_str())
                .or_insert(change);
            if change.rank > slot.rank {
                *slot = change;
            }
        }
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let known = self.message_ranks(best.keys().copied()).await?;
        let mut outcomes: HashMap<&str, StatusOutcome> = HashMap::new();
        let mut updates: BTreeMap<Uuid, &StatusChange> = BTreeMap::new();
        let mut waiting = Vec::new();
        for (provider_id, change) in &best {
            let outcome = match known.get(*provider_id) {
                Some((id, rank)) if *rank < change.rank => {
                    updates.insert(*id, change);
                    StatusOutcome::Applied
                }
                Some(_) => StatusOutcome::Stale,
                None => {
                    waiting.push(*change);
                    StatusOutcome::Pending
                }
            };
            outcomes.insert(provider_id, outcome);
        }
        self.update_statuses(&updates).await?;
        self.keep_pending_statuses(&waiting).await?;
        Ok(changes
            .iter()
            .map(|c| outcomes[c.provider_message_id.as_str()])
            .collect())
    }

    /// Message id and status rank by provider id.
    async fn message_ranks<'k>(
        &mut self,
        provider_ids: impl Iterator<Item = &'k str>,
    ) -> Result<HashMap<String, (Uuid, i64)>> {
        let tenant = *self.tenant().as_uuid();
        let keys: Vec<String> = provider_ids.map(str::to_string).collect();
        let rows = on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "SELECT provider_message_id, id, status_rank FROM messages WHERE tenant_id = ",
            );
            q.push_bind(tenant).push(" AND");
            push_in(&mut q, "provider_message_id", keys.iter().cloned());
            q.build_query_as::<(String, Uuid, i64)>()
                .persistent(false)
                .fetch_all(c)
                .await
        })
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(provider_id, id, rank)| (provider_id, (id, rank)))
            .collect())
    }

    /// Applies statuses by message id, locking the rows in id order first (PostgreSQL), as
    /// the dispatcher's outcome writer does. The rank check is repeated in the update: a
    /// concurrent writer may have moved a message on since it was read.
    async fn update_statuses(&mut self, updates: &BTreeMap<Uuid, &StatusChange>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        self.lock_messages(updates.keys().copied()).await?;
        let tenant = *self.tenant().as_uuid();
        on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new("UPDATE messages SET status = v.column2, status_rank = v.column3, status_at = v.column4, error = COALESCE(v.column5, messages.error) FROM (");
            q.push_values(updates, |mut row, (id, change)| {
                row.push_bind(*id)
                    .push_bind(change.status.clone())
                    .push_bind(change.rank)
                    .push_bind(change.at.map(Timestamp::as_millis))
                    .push_bind(change.error.as_ref().map(json_text));
            });
            q.push(") AS v WHERE messages.tenant_id = ")
                .push_bind(tenant)
                .push(" AND messages.id = v.column1 AND messages.status_rank < v.column3");
            q.build().persistent(false).execute(c).await.map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    /// Locks messages in id order (PostgreSQL; SQLite has one writer and needs none).
    pub(crate) async fn lock_messages(&mut self, ids: impl Iterator<Item = Uuid>) -> Result<()> {
        let tenant = *self.tenant().as_uuid();
        let Conn::Postgres(tx) = &mut self.conn else {
            return Ok(());
        };
        let mut ids: Vec<Uuid> = ids.collect();
        ids.sort_unstable();
        sqlx::query(
            "SELECT 1 FROM messages WHERE tenant_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE",
        )
        .bind(tenant)
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn keep_pending_statuses(&mut self, waiting: &[&StatusChange]) -> Result<()> {
        if waiting.is_empty() {
            return Ok(());
        }
        let tenant = *self.tenant().as_uuid();
        let now = Timestamp::now().as_millis();
        on_conn!(&mut self.conn, |c| {
            let mut q = QueryBuilder::new(
                "INSERT INTO pending_statuses (tenant_id, provider_message_id, status, status_rank, \
                 status_at, error, received_at) ",
            );
            q.push_values(waiting, |mut row, change| {
                row.push_bind(tenant)
                    .push_bind(change.provider_message_id.clone())
                    .push_bind(change.status.clone())
                    .push_bind(change.rank)
                    .push_bind(change.at.map(Timestamp::as_millis))
                    .push_bind(change.error.as_ref().map(json_text))
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (tenant_id, provider_message_id, status) DO NOTHING");
            q.build().persistent(false).execute(c).await.map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }
}
