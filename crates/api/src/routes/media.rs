use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use serde::Deserialize;
use waypost_core::{ChannelId, Error, ErrorCode, MessageId};
use waypost_outbound::provider::MediaRef;

use crate::{
    ApiError, AppState,
    auth::Auth,
    problem::{ApiPath, ApiQuery, Problem},
    routes::channels::provider_client,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MediaQuery {
    /// The channel the media arrived on (its credentials fetch it).
    pub channel_id: ChannelId,
}

/// Media is personal data: callers who see identifiers masked (analysts, operators without an
/// unmask) may not fetch it.
fn may_see_media(auth: &Auth) -> Result<(), ApiError> {
    if auth.unmasked {
        Ok(())
    } else {
        Err(ApiError(Error::new(
            ErrorCode::Forbidden,
            "media is personal data; it is not shown to this role without an unmask",
        )))
    }
}

/// Fetches the file through the channel's provider (audited) and streams it back with the
/// provider's content type.
async fn stream_media(
    state: &AppState,
    auth: &Auth,
    channel: ChannelId,
    media: MediaRef<'_>,
    mime_type: Option<String>,
    audited_as: &str,
) -> Result<Response, ApiError> {
    let (_, client) = provider_client(state, auth, channel).await?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.audit(auth.event("media.read", "media", audited_as))
        .await?;
    tx.commit().await?;
    let media = client.fetch_media(&media).await?;
    let file = media.response;
    let content_type = mime_type
        .or(media.mime_type)
        .or_else(|| {
            file.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    let stream = file.bytes_stream().map_err(std::io::Error::other);
    let mut response = Body::from_stream(stream).into_response();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Streams a media file by the provider's media id (Meta and 360dialog channels), with the
/// channel's credentials. Reading it is audited.
#[utoipa::path(get, path = "/api/v1/media/{id}", tag = "conversations",
    params(("id" = String, Path, description = "The provider's media id, from a message"), MediaQuery),
    responses(
        (status = OK, description = "The file, with the provider's content type"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn get_media(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(media_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<MediaQuery>,
) -> Result<Response, ApiError> {
    may_see_media(&auth)?;
    if media_id.is_empty()
        || media_id.len() > 128
        || !media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::not_found("media").into());
    }
    let media = MediaRef {
        id: Some(&media_id),
        url: None,
    };
    stream_media(&state, &auth, query.channel_id, media, None, &media_id).await
}

/// Streams the media of an inbound message (image, video, voice note, document, sticker)
/// from whichever provider it came through: by media id for Meta and 360dialog, by the
/// webhook's URL for Twilio, Gupshup and Bird. Reading it is audited.
#[utoipa::path(get, path = "/api/v1/messages/{id}/media", tag = "conversations",
    params(("id" = MessageId, Path, description = "An inbound message with media")),
    responses(
        (status = OK, description = "The file, with its content type"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn get_message_media(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<MessageId>,
) -> Result<Response, ApiError> {
    let (message, channel) = {
        let mut tx = state.store.tenant_read(auth.tenant()?).await?;
        let message = tx.get_message(id).await?;
        let (channel, _) = tx.message_route(id).await?;
        (message, channel)
    };
    let media = message
        .content
        .get("media")
        .filter(|_| message.direction == "inbound")
        .ok_or_else(|| Error::not_found("media"))?;
    may_see_media(&auth)?;
    let text = |k: &str| media.get(k).and_then(serde_json::Value::as_str);
    let reference = MediaRef {
        id: text("id"),
        url: text("url"),
    };
    let mime_type = text("mime_type").map(str::to_string);
    stream_media(
        &state,
        &auth,
        channel,
        reference,
        mime_type,
        &id.to_string(),
    )
    .await
}
