//! Contacts and their consent history.

use serde::Serialize;
use uuid::Uuid;
use waypost_core::{ContactId, Cursor, Error, ErrorCode, Page, PhoneNumber, Result, Timestamp};

use crate::{
    connect::db_error,
    tx::{Tenant, Tx, on_conn},
};

pub const MARKETING: &str = "marketing";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Contact {
    pub id: ContactId,
    /// E.164, when the number is known (users known only by BSUID have none).
    pub phone: Option<String>,
    pub wa_id: Option<String>,
    pub bsuid: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
    /// `opted_in`, `opted_out` or `unknown`, from the latest marketing consent event.
    pub marketing_consent: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConsentEvent {
    pub purpose: String,
    /// `opt_in` or `opt_out`.
    pub action: String,
    /// `api`, `keyword`, `import`, `meta_signal` or `agent`.
    pub source: String,
    pub note: Option<String>,
    pub at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    id: Uuid,
    phone_e164: Option<String>,
    wa_id: Option<String>,
    bsuid: Option<String>,
    profile_name: Option<String>,
    username: Option<String>,
    consent: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<ContactRow> for Contact {
    fn from(r: ContactRow) -> Self {
        Contact {
            id: ContactId::from_uuid(r.id),
            phone: r.phone_e164,
            wa_id: r.wa_id,
            bsuid: r.bsuid,
            name: r.profile_name,
            username: r.username,
            marketing_consent: match r.consent.as_deref() {
                Some("opt_in") => "opted_in",
                Some("opt_out") => "opted_out",
                _ => "unknown",
            }
            .to_string(),
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        }
    }
}

/// The latest marketing consent action per contact, as a correlated subquery.
macro_rules! contact_select {
    () => {
        "SELECT k.id, k.phone_e164, k.wa_id, k.bsuid, k.profile_name, k.username, \
         (SELECT e.action FROM consent_events e WHERE e.tenant_id = k.tenant_id \
          AND e.contact_id = k.id AND e.purpose = 'marketing' ORDER BY e.id DESC LIMIT 1) AS consent, \
         k.created_at, k.updated_at FROM contacts k"
    };
}

/// A contact named exactly: what callers who see personal data masked may search by, so a
/// search cannot be used to guess numbers or names a piece at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactKey {
    Id(ContactId),
    /// Matches the contact's E.164 number or its WhatsApp id.
    Phone(PhoneNumber),
}

/// Which keywords opt a contact out of, or back into, marketing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConsentSettings {
    /// Words that opt out of marketing: at least one; with the opt-in words at most 100, each
    /// 1 to 32 characters.
    pub opt_out_keywords: Vec<String>,
    /// Words that opt back in (counted with the opt-out words; each 1 to 32 characters).
    pub opt_in_keywords: Vec<String>,
    /// Sent back as a WhatsApp text after a keyword changes consent: at most 4096 characters.
    pub confirmation_reply: Option<String>,
}

impl ConsentSettings {
    /// Opt-out and opt-in keywords together.
    pub const MAX_KEYWORDS: usize = 100;
    pub const KEYWORD_MAX: usize = 32;
    /// A WhatsApp text message's limit.
    pub const REPLY_MAX: usize = 4096;
}

impl Default for ConsentSettings {
    fn default() -> Self {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        Self {
            opt_out_keywords: words(&["STOP", "UNSUBSCRIBE", "STOPALL", "CANCEL", "END", "QUIT"]),
            opt_in_keywords: words(&["START", "UNSTOP"]),
            confirmation_reply: None,
        }
    }
}

impl Tx<Tenant> {
    /// Creates a contact for a phone number; the number's WhatsApp id must be new here.
    pub async fn create_contact(
        &mut self,
        phone: &PhoneNumber,
        name: Option<&str>,
    ) -> Result<Contact> {
        let tenant = self.tenant();
        let id = ContactId::new();
        let now = Timestamp::now().as_millis();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO contacts (tenant_id, id, wa_id, phone_e164, profile_name, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(phone.wa_id())
            .bind(phone.as_e164())
            .bind(name)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| match db_error(e) {
            err if err.code() == ErrorCode::Conflict => Error::new(
                ErrorCode::Conflict,
                "a contact with this number already exists",
            ),
            err => err,
        })?;
        self.get_contact(id).await
    }

    pub async fn get_contact(&mut self, id: ContactId) -> Result<Contact> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ContactRow>(concat!(
                contact_select!(),
                " WHERE k.tenant_id = $1 AND k.id = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?
        .map(Contact::from)
        .ok_or_else(|| Error::not_found("contact"))
    }

    /// Contacts in creation order; `search` matches the phone number exactly (any format) or
    /// the name, case-insensitively, anywhere.
    pub async fn list_contacts(
        &mut self,
        search: Option<&str>,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Contact>> {
        let tenant = self.tenant();
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        let phone = search
            .and_then(|s| PhoneNumber::parse(s).ok())
            .map(|p| p.as_e164().to_string());
        let name = search.map(|s| s.to_lowercase()).unwrap_or_default();
        // A search made only of phone characters also matches part of the number.
        let digits = search
            .filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_digit() || " -.()+".contains(c))
            })
            .map(|s| s.chars().filter(char::is_ascii_digit).collect::<String>())
            .filter(|d| d.len() >= 4)
            .unwrap_or_default();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ContactRow>(concat!(
                contact_select!(),
                " WHERE k.tenant_id = $1 AND k.id > $2 \
                 AND ($3 = '' OR k.phone_e164 = $4 \
                      OR ($6 <> '' AND k.wa_id LIKE '%' || $6 || '%') \
                      OR LOWER(COALESCE(k.profile_name, '')) LIKE '%' || $3 || '%') \
                 ORDER BY k.id LIMIT $5"
            ))
            .bind(tenant.as_uuid())
            .bind(after.map_or(Uuid::nil(), Cursor::id))
            .bind(&name)
            .bind(phone.as_deref().unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .bind(&digits)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(Page::from_rows(
            rows.into_iter().map(Contact::from).collect(),
            limit,
            |c| *c.id.as_uuid(),
        ))
    }

    /// The contacts `key` names exactly (at most one per number form).
    pub async fn contacts_by_key(&mut self, key: &ContactKey) -> Result<Vec<Contact>> {
        match key {
            ContactKey::Id(id) => match self.get_contact(*id).await {
                Ok(contact) => Ok(vec![contact]),
                Err(err) if err.code() == ErrorCode::NotFound => Ok(Vec::new()),
                Err(err) => Err(err),
            },
            ContactKey::Phone(phone) => {
                let tenant = self.tenant();
                let rows = on_conn!(&mut self.conn, |c| {
                    sqlx::query_as::<_, ContactRow>(concat!(
                        contact_select!(),
                        " WHERE k.tenant_id = $1 AND (k.phone_e164 = $2 OR k.wa_id = $3) \
                         ORDER BY k.id"
                    ))
                    .bind(tenant.as_uuid())
                    .bind(phone.as_e164())
                    .bind(phone.wa_id())
                    .fetch_all(c)
                    .await
                })
                .map_err(db_error)?;
                Ok(rows.into_iter().map(Contact::from).collect())
            }
        }
    }

    pub async fn rename_contact(&mut self, id: ContactId, name: Option<&str>) -> Result<()> {
        let tenant = self.tenant();
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE contacts SET profile_name = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .bind(name)
                .bind(Timestamp::now().as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if updated == 1 {
            Ok(())
        } else {
            Err(Error::not_found("contact"))
        }
    }

    /// The contact with this WhatsApp id, if any.
    pub async fn contact_by_wa_id(&mut self, wa_id: &str) -> Result<Option<ContactId>> {
        let tenant = self.tenant();
        let id = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM contacts WHERE tenant_id = $1 AND wa_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(wa_id)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(id.map(ContactId::from_uuid))
    }

    /// Appends to a contact's consent history.
    pub async fn record_consent(
        &mut self,
        contact: ContactId,
        purpose: &str,
        action: &str,
        source: &str,
        note: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO consent_events (tenant_id, id, contact_id, purpose, action, source, note, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(tenant.as_uuid())
            .bind(Uuid::now_v7())
            .bind(contact.as_uuid())
            .bind(purpose)
            .bind(action)
            .bind(source)
            .bind(note)
            .bind(at.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn consent_history(&mut self, contact: ContactId) -> Result<Vec<ConsentEvent>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            purpose: String,
            action: String,
            source: String,
            note: Option<String>,
            at: i64,
        }
        let tenant = self.tenant();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT purpose, action, source, note, at FROM consent_events \
                 WHERE tenant_id = $1 AND contact_id = $2 ORDER BY id",
            )
            .bind(tenant.as_uuid())
            .bind(contact.as_uuid())
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| ConsentEvent {
                purpose: r.purpose,
                action: r.action,
                source: r.source,
                note: r.note,
                at: Timestamp::from_millis(r.at),
            })
            .collect())
    }

    pub async fn consent_settings(&mut self) -> Result<ConsentSettings> {
        #[derive(sqlx::FromRow)]
        struct Row {
            opt_out_keywords: String,
            opt_in_keywords: String,
            confirmation_reply: Option<String>,
        }
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT opt_out_keywords, opt_in_keywords, confirmation_reply FROM consent_settings \
                 WHERE tenant_id = $1",
            )
            .bind(tenant.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(ConsentSettings::default());
        };
        let list = |text: &str| {
            serde_json::from_str(text).map_err(|e| Error::internal("stored keywords", e))
        };
        Ok(ConsentSettings {
            opt_out_keywords: list(&row.opt_out_keywords)?,
            opt_in_keywords: list(&row.opt_in_keywords)?,
            confirmation_reply: row.confirmation_reply,
        })
    }

    pub async fn put_consent_settings(&mut self, settings: &ConsentSettings) -> Result<()> {
        let tenant = self.tenant();
        let encode = |words: &Vec<String>| {
            serde_json::to_string(words).map_err(|e| Error::internal("keywords", e))
        };
        let (out, into) = (
            encode(&settings.opt_out_keywords)?,
            encode(&settings.opt_in_keywords)?,
        );
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO consent_settings (tenant_id, opt_out_keywords, opt_in_keywords, \
                 confirmation_reply, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant_id) DO UPDATE SET opt_out_keywords = $2, opt_in_keywords = $3, \
                 confirmation_reply = $4, updated_at = $5",
            )
            .bind(tenant.as_uuid())
            .bind(&out)
            .bind(&into)
            .bind(&settings.confirmation_reply)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }
}
