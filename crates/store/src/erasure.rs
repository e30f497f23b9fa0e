//! Erasing a contact, and every copy of it: its own rows (conversations, messages with their
//! outbox rows and idempotency keys, consent history) and the raw copies that quote it by
//! number or user id — webhook bodies, channel events, early statuses, a channel's stop
//! reason and job errors, which name no contact id to delete by.
//!
//! Raw copies are found by searching for the contact's identifiers. Webhook bodies that
//! mention it are blanked whole rather than edited: a body may quote the contact anywhere, in
//! any provider's encoding, and what it said for others is already processed into their own
//! rows (the caller processes pending bodies first). Searching scans the tenant's inbox,
//! which retention bounds; erasure is rare, and the hot paths stay free of bookkeeping.

use uuid::Uuid;
use waypost_core::{ContactId, InboxId, Result, Timestamp};

use crate::{
    Contact,
    connect::db_error,
    tx::{Conn, Tenant, Tx, on_conn},
};

/// Identifiers shorter than this would match unrelated text (real numbers have at least six
/// digits); a provider-given id that short is not searched for.
const MIN_NEEDLE: usize = 6;

/// What a contact is quoted by in raw copies: its WhatsApp id, its number's digits (which
/// every provider's encoding of the number contains) and its BSUID, each once.
fn needles(contact: &Contact) -> [Option<String>; 3] {
    let digits = contact
        .phone
        .as_deref()
        .map(|p| p.trim_start_matches('+').to_string());
    let wa_id = contact.wa_id.clone();
    let digits = digits.filter(|d| Some(d) != wa_id.as_ref());
    [wa_id, digits, contact.bsuid.clone()].map(|n| n.filter(|n| n.len() >= MIN_NEEDLE))
}

/// `$col` contains one of the needles `$2`, `$3`, `$4` (NULL for none). `instr` and
/// `position` compare bytes exactly, where LIKE would read a `%` or `_` in a provider-given id
/// as a wildcard.
macro_rules! mentions {
    (sqlite, $col:literal) => {
        concat!(
            "(instr(",
            $col,
            ", $2) > 0 OR instr(",
            $col,
            ", $3) > 0 OR instr(",
            $col,
            ", $4) > 0)"
        )
    };
    (postgres, $col:literal) => {
        concat!(
            "(position($2 IN ",
            $col,
            ") > 0 OR position($3 IN ",
            $col,
            ") > 0 \
             OR position($4 IN ",
            $col,
            ") > 0)"
        )
    };
}

struct ErasureSql {
    /// Bodies that mention the contact and still wait for processing.
    unprocessed: &'static str,
    /// Every body that mentions the contact, blanked (`$5`) and marked processed (`$6`).
    blank_bodies: &'static str,
    /// Text copies: deleted, or their quoting field cleared.
    quoting: [&'static str; 4],
}

macro_rules! erasure_sql {
    ($engine:ident) => {
        ErasureSql {
            unprocessed: concat!(
                "SELECT id FROM webhook_inbox WHERE tenant_id = $1 AND processed_at IS NULL AND ",
                mentions!($engine, "body")
            ),
            blank_bodies: concat!(
                "UPDATE webhook_inbox SET body = $5, processed_at = COALESCE(processed_at, $6) \
                 WHERE tenant_id = $1 AND ",
                mentions!($engine, "body")
            ),
            quoting: [
                concat!(
                    "DELETE FROM channel_events WHERE tenant_id = $1 AND ",
                    mentions!($engine, "payload")
                ),
                concat!(
                    "DELETE FROM pending_statuses WHERE tenant_id = $1 AND ",
                    mentions!($engine, "error")
                ),
                concat!(
                    "UPDATE channels SET send_state_reason = 'the provider''s reason quoted an \
                     erased contact' WHERE tenant_id = $1 AND ",
                    mentions!($engine, "send_state_reason")
                ),
                concat!(
                    "UPDATE jobs SET last_error = NULL WHERE tenant_id = $1 AND ",
                    mentions!($engine, "last_error")
                ),
            ],
        }
    };
}

const SQLITE: ErasureSql = erasure_sql!(sqlite);
const POSTGRES: ErasureSql = erasure_sql!(postgres);

/// The contact's own rows, children first.
const OWN_ROWS: [&str; 6] = [
    // Unsent messages go too: an erased contact is never messaged again.
    "DELETE FROM outbox WHERE tenant_id = $1 AND message_id IN (SELECT id FROM messages \
     WHERE tenant_id = $1 AND conversation_id IN \
     (SELECT id FROM conversations WHERE tenant_id = $1 AND contact_id = $2))",
    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND message_id IN (SELECT id FROM messages \
     WHERE tenant_id = $1 AND conversation_id IN \
     (SELECT id FROM conversations WHERE tenant_id = $1 AND contact_id = $2))",
    "DELETE FROM messages WHERE tenant_id = $1 AND conversation_id IN \
     (SELECT id FROM conversations WHERE tenant_id = $1 AND contact_id = $2)",
    "DELETE FROM conversations WHERE tenant_id = $1 AND contact_id = $2",
    "DELETE FROM consent_events WHERE tenant_id = $1 AND contact_id = $2",
    "DELETE FROM contacts WHERE tenant_id = $1 AND id = $2",
];

impl Tx<Tenant> {
    fn erasure_sql(&self) -> &'static ErasureSql {
        match self.conn {
            Conn::Sqlite(_) => &SQLITE,
            Conn::Postgres(_) => &POSTGRES,
        }
    }

    /// Stored webhook bodies that mention the contact and are not processed yet: process
    /// them before erasing, or they would bring the contact back.
    pub async fn unprocessed_inbox_mentioning(
        &mut self,
        contact: ContactId,
    ) -> Result<Vec<InboxId>> {
        let [a, b, c] =
            needles(&self.get_contact(contact).await?).map(|n| n.map(String::into_bytes));
        let tenant = self.tenant();
        let sql = self.erasure_sql().unprocessed;
        let ids = on_conn!(&mut self.conn, |conn| {
            sqlx::query_scalar::<_, Uuid>(sql)
                .bind(tenant.as_uuid())
                .bind(&a)
                .bind(&b)
                .bind(&c)
                .fetch_all(conn)
                .await
        })
        .map_err(db_error)?;
        Ok(ids.into_iter().map(InboxId::from_uuid).collect())
    }

    /// Erases a contact with its conversations, messages and consent history, and blanks or
    /// deletes every raw copy that quotes it (see the module documentation).
    pub async fn delete_contact(&mut self, id: ContactId) -> Result<()> {
        let tenant = self.tenant();
        let needles = needles(&self.get_contact(id).await?);
        let sql = self.erasure_sql();
        let [a, b, c] = needles.clone().map(|n| n.map(String::into_bytes));
        let now = Timestamp::now().as_millis();
        on_conn!(&mut self.conn, |conn| {
            sqlx::query(sql.blank_bodies)
                .bind(tenant.as_uuid())
                .bind(&a)
                .bind(&b)
                .bind(&c)
                .bind(Vec::<u8>::new())
                .bind(now)
                .execute(conn)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        let [a, b, c] = needles;
        for statement in sql.quoting {
            on_conn!(&mut self.conn, |conn| {
                sqlx::query(statement)
                    .bind(tenant.as_uuid())
                    .bind(&a)
                    .bind(&b)
                    .bind(&c)
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
        }
        for statement in OWN_ROWS {
            on_conn!(&mut self.conn, |conn| {
                sqlx::query(statement)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .execute(conn)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(phone: Option<&str>, wa_id: Option<&str>, bsuid: Option<&str>) -> Contact {
        Contact {
            id: ContactId::new(),
            phone: phone.map(str::to_string),
            wa_id: wa_id.map(str::to_string),
            bsuid: bsuid.map(str::to_string),
            name: None,
            username: None,
            marketing_consent: "unknown".into(),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn needles_are_each_identifier_once_and_never_short() {
        assert_eq!(
            needles(&contact(
                Some("+14155550100"),
                Some("14155550100"),
                Some("US.1349")
            )),
            [Some("14155550100".into()), None, Some("US.1349".into())]
        );
        // Meta reports some Mexican numbers with an extra digit: both forms are searched.
        assert_eq!(
            needles(&contact(Some("+5215512345678"), Some("525512345678"), None)),
            [
                Some("525512345678".into()),
                Some("5215512345678".into()),
                None
            ]
        );
        assert_eq!(
            needles(&contact(None, Some("1"), Some("US.1"))),
            [None, None, None]
        );
    }
}
