//! Local copies of each channel's message templates: synced from the provider, created
//! through the API, and kept current by template webhooks.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use waypost_core::{ChannelId, Cursor, Error, Page, Result, TemplateId, Timestamp};

use crate::{
    connect::db_error,
    inbound::json_text,
    tx::{Tenant, Tx, on_conn},
};

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Template {
    pub id: TemplateId,
    pub channel_id: ChannelId,
    /// The provider's template id (Meta's `message_template_id`).
    pub provider_template_id: Option<String>,
    pub name: String,
    /// e.g. `en_US`.
    pub language: String,
    /// `MARKETING`, `UTILITY` or `AUTHENTICATION`.
    pub category: String,
    /// `APPROVED`, `PENDING`, `REJECTED`, `PAUSED`, `DISABLED`, ...
    pub status: String,
    /// `GREEN`, `YELLOW`, `RED` or `UNKNOWN`, when the provider reported one.
    pub quality: Option<String>,
    /// `POSITIONAL` (`{{1}}`) or `NAMED` (`{{name}}`).
    pub parameter_format: String,
    /// The components as the provider describes them (HEADER, BODY, FOOTER, BUTTONS).
    #[schema(value_type = Vec<Object>)]
    pub components: Value,
    /// Why it was rejected, paused or disabled, when known.
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A template as the provider reports it.
#[derive(Debug, Clone)]
pub struct TemplateUpsert {
    pub provider_template_id: Option<String>,
    pub name: String,
    pub language: String,
    pub category: String,
    pub status: String,
    pub quality: Option<String>,
    pub parameter_format: String,
    pub components: Value,
    pub reason: Option<String>,
}

/// A change from a template webhook; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct TemplateChange {
    pub provider_template_id: Option<String>,
    pub name: Option<String>,
    pub language: Option<String>,
    pub status: Option<String>,
    pub quality: Option<String>,
    pub category: Option<String>,
    pub reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: Uuid,
    channel_id: Uuid,
    provider_template_id: Option<String>,
    name: String,
    language: String,
    category: String,
    status: String,
    quality: Option<String>,
    parameter_format: String,
    components: String,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<TemplateRow> for Template {
    type Error = Error;

    fn try_from(r: TemplateRow) -> Result<Self> {
        Ok(Template {
            id: TemplateId::from_uuid(r.id),
            channel_id: ChannelId::from_uuid(r.channel_id),
            provider_template_id: r.provider_template_id,
            name: r.name,
            language: r.language,
            category: r.category,
            status: r.status,
            quality: r.quality,
            parameter_format: r.parameter_format,
            components: serde_json::from_str(&r.components)
                .map_err(|e| Error::internal("stored template components", e))?,
            reason: r.reason,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }
}

macro_rules! template_select {
    () => {
        "SELECT id, channel_id, provider_template_id, name, language, category, status, quality, \
         parameter_format, components, reason, created_at, updated_at FROM templates"
    };
}

impl Tx<Tenant> {
    /// Inserts or replaces the template with this channel, name and language.
    pub async fn upsert_template(
        &mut self,
        channel: ChannelId,
        t: &TemplateUpsert,
    ) -> Result<Template> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let id = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO templates (tenant_id, id, channel_id, provider_template_id, name, language, \
                 category, status, quality, parameter_format, components, reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
                 ON CONFLICT (tenant_id, channel_id, name, language) DO UPDATE SET \
                 provider_template_id = COALESCE(excluded.provider_template_id, templates.provider_template_id), \
                 category = excluded.category, status = excluded.status, \
                 quality = COALESCE(excluded.quality, templates.quality), \
                 parameter_format = excluded.parameter_format, components = excluded.components, \
                 reason = excluded.reason, updated_at = excluded.updated_at \
                 RETURNING id",
            )
            .bind(tenant.as_uuid())
            .bind(Uuid::now_v7())
            .bind(channel.as_uuid())
            .bind(&t.provider_template_id)
            .bind(&t.name)
            .bind(&t.language)
            .bind(&t.category)
            .bind(&t.status)
            .bind(&t.quality)
            .bind(&t.parameter_format)
            .bind(json_text(&t.components))
            .bind(&t.reason)
            .bind(now)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        self.get_template(TemplateId::from_uuid(id)).await
    }

    pub async fn get_template(&mut self, id: TemplateId) -> Result<Template> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TemplateRow>(concat!(
                template_select!(),
                " WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        row.ok_or_else(|| Error::not_found("template"))?.try_into()
    }

    /// The template a send names, if this channel has it.
    pub async fn find_template(
        &mut self,
        channel: ChannelId,
        name: &str,
        language: &str,
    ) -> Result<Option<Template>> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TemplateRow>(concat!(
                template_select!(),
                " WHERE tenant_id = $1 AND channel_id = $2 AND name = $3 AND language = $4"
            ))
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(name)
            .bind(language)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        row.map(Template::try_from).transpose()
    }

    pub async fn list_templates(
        &mut self,
        channel: Option<ChannelId>,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Template>> {
        let tenant = self.tenant();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, TemplateRow>(concat!(
                template_select!(),
                " WHERE tenant_id = $1 AND ($2 IS NULL OR channel_id = $2) AND id > $3 \
                 ORDER BY id LIMIT $4"
            ))
            .bind(tenant.as_uuid())
            .bind(channel.map(|c| *c.as_uuid()))
            .bind(after.map_or(Uuid::nil(), Cursor::id))
            .bind(i64::from(limit) + 1)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        let templates = rows
            .into_iter()
            .map(Template::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(templates, limit, |t| *t.id.as_uuid()))
    }

    pub async fn delete_template(&mut self, id: TemplateId) -> Result<()> {
        let tenant = self.tenant();
        let deleted = on_conn!(&mut self.conn, |c| {
            sqlx::query("DELETE FROM templates WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if deleted == 0 {
            return Err(Error::not_found("template"));
        }
        Ok(())
    }

    /// Applies a template webhook to the matching template (by provider id, else by name and
    /// language). `false` when no local copy exists yet (a sync will bring it).
    pub async fn apply_template_change(
        &mut self,
        channel: ChannelId,
        change: &TemplateChange,
    ) -> Result<bool> {
        let tenant = self.tenant();
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE templates SET status = COALESCE($5, status), quality = COALESCE($6, quality), \
                 category = COALESCE($7, category), reason = CASE WHEN $5 IS NULL THEN reason ELSE $8 END, \
                 provider_template_id = COALESCE(provider_template_id, $3), updated_at = $9 \
                 WHERE tenant_id = $1 AND channel_id = $2 AND \
                 (provider_template_id = $3 OR (name = $4 AND ($10 IS NULL OR language = $10)))",
            )
            .bind(tenant.as_uuid())
            .bind(channel.as_uuid())
            .bind(&change.provider_template_id)
            .bind(&change.name)
            .bind(&change.status)
            .bind(&change.quality)
            .bind(&change.category)
            .bind(&change.reason)
            .bind(Timestamp::now().as_millis())
            .bind(&change.language)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(updated > 0)
    }
}
