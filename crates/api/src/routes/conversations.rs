use axum::{Json, extract::State};
use waypost_core::{ConversationId, Page, PageRequest};
use waypost_store::{Conversation, StoredMessage};

use crate::{
    ApiError, AppState,
    auth::Auth,
    problem::{ApiPath, ApiQuery, Problem},
};

/// The tenant's conversations: one per contact and channel, with the 24-hour window.
/// Reading them is audited; analysts and operators without an unmask see identifiers masked.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations",
    params(PageRequest),
    responses((status = OK, body = Page<Conversation>)))]
pub async fn list_conversations(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<Conversation>>, ApiError> {
    let (limit, cursor) = page.parse()?;
    let tenant = auth.tenant()?;
    let page = {
        let mut tx = state.store.tenant_read(tenant).await?;
        tx.list_conversations(limit, cursor).await?
    };
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event("conversation.list", "conversations", page.data.len()))
        .await?;
    tx.commit().await?;
    Ok(Json(auth.shown(page)))
}

/// A conversation's messages, oldest first. Another tenant's conversation answers 404.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = ConversationId, Path, description = "Conversation id"), PageRequest),
    responses((status = OK, body = Page<StoredMessage>), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn list_messages(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<StoredMessage>>, ApiError> {
    let (limit, cursor) = page.parse()?;
    let tenant = auth.tenant()?;
    let page = {
        let mut tx = state.store.tenant_read(tenant).await?;
        tx.list_messages(id, limit, cursor).await?
    };
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event("message.read", "conversation", id))
        .await?;
    tx.commit().await?;
    Ok(Json(auth.shown(page)))
}
