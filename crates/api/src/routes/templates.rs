use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use waypost_core::{ChannelId, Page, PageRequest, TemplateId};
use waypost_outbound::template::{self, NewTemplate, Rendered};
use waypost_store::{Template, TemplateUpsert};

use crate::{
    ApiError, AppState,
    auth::Auth,
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
    routes::channels::provider_client,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncResult {
    /// Templates read from the provider and stored or updated.
    pub synced: usize,
}

/// Reads every template of the channel's WhatsApp Business Account from the provider (all
/// pages) and stores or updates the local copies.
#[utoipa::path(post, path = "/api/v1/channels/{id}/templates/sync", tag = "templates",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = OK, body = SyncResult),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")))]
pub async fn sync_templates(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<Json<SyncResult>, ApiError> {
    let (channel, client) = provider_client(&state, &auth, id).await?;
    let remote = client.list_templates().await?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let mut synced = 0;
    for object in &remote {
        if let Some(t) = template::from_graph(object) {
            tx.upsert_template(channel.id, &t).await?;
            synced += 1;
        }
    }
    tx.audit(auth.event("template.sync", "channel", channel.id))
        .await?;
    tx.commit().await?;
    Ok(Json(SyncResult { synced }))
}

/// Submits a new template to the provider for approval and keeps a local copy (its status
/// then follows the template webhooks).
#[utoipa::path(post, path = "/api/v1/channels/{id}/templates", tag = "templates",
    params(("id" = ChannelId, Path, description = "Channel id")),
    request_body = NewTemplate,
    responses((status = CREATED, body = Template),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")))]
pub async fn create_template(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(body): ApiJson<NewTemplate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    body.validate()?;
    let (channel, client) = provider_client(&state, &auth, id).await?;
    let answer = client.create_template(&body).await?;
    let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let stored = tx
        .upsert_template(
            channel.id,
            &TemplateUpsert {
                provider_template_id: text("id"),
                name: body.name.clone(),
                language: body.language.clone(),
                category: text("category").unwrap_or_else(|| body.category.clone()),
                status: text("status").unwrap_or_else(|| "PENDING".into()),
                quality: None,
                parameter_format: body
                    .parameter_format
                    .clone()
                    .unwrap_or_else(|| "POSITIONAL".into()),
                components: Value::Array(body.components.clone()),
                reason: None,
            },
        )
        .await?;
    tx.audit(auth.event("template.create", "template", stored.id))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TemplateQuery {
    pub channel_id: Option<ChannelId>,
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Local templates with status, category, language, components and quality.
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    params(TemplateQuery),
    responses((status = OK, body = Page<Template>)))]
pub async fn list_templates(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<TemplateQuery>,
) -> Result<Json<Page<Template>>, ApiError> {
    let (limit, cursor) = PageRequest {
        limit: query.limit,
        cursor: query.cursor,
    }
    .parse()?;
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    Ok(Json(
        tx.list_templates(query.channel_id, limit, cursor).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/templates/{id}", tag = "templates",
    params(("id" = TemplateId, Path, description = "Template id")),
    responses((status = OK, body = Template), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn get_template(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<TemplateId>,
) -> Result<Json<Template>, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    Ok(Json(tx.get_template(id).await?))
}

/// Deletes the template at the provider (every language of that name, as Meta does) and
/// the local copy.
#[utoipa::path(delete, path = "/api/v1/templates/{id}", tag = "templates",
    params(("id" = TemplateId, Path, description = "Template id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_template(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<TemplateId>,
) -> Result<StatusCode, ApiError> {
    let stored = {
        let mut tx = state.store.tenant_read(auth.tenant()?).await?;
        tx.get_template(id).await?
    };
    let (_, client) = provider_client(&state, &auth, stored.channel_id).await?;
    client
        .delete_template(&stored.name, stored.provider_template_id.as_deref())
        .await?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.delete_template(id).await?;
    tx.audit(auth.event("template.delete", "template", id))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// Header, body and button parameters, exactly as a send takes them (each text parameter
    /// 1 to 1024 characters, and as many as the template has placeholders).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Value>,
}

/// Renders the template with the given parameters, checking them as a send would.
#[utoipa::path(post, path = "/api/v1/templates/{id}/preview", tag = "templates",
    params(("id" = TemplateId, Path, description = "Template id")),
    request_body = PreviewRequest,
    responses((status = OK, body = Rendered),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn preview_template(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<TemplateId>,
    ApiJson(body): ApiJson<PreviewRequest>,
) -> Result<Json<Rendered>, ApiError> {
    let stored = {
        let mut tx = state.store.tenant_read(auth.tenant()?).await?;
        tx.get_template(id).await?
    };
    Ok(Json(template::render(&stored, &body.components)?))
}
