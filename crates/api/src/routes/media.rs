use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use serde::Deserialize;
use waypost_core::{ChannelId, Error, ErrorCode};

use crate::{
    ApiError, AppState,
    auth::Auth,
    problem::{ApiPath, ApiQuery, Problem},
    routes::channels::secret_purpose,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MediaQuery {
    /// The channel the media arrived on (its credentials fetch it).
    pub channel_id: ChannelId,
}

#[derive(Debug, Deserialize)]
struct MediaInfo {
    url: String,
    mime_type: Option<String>,
}

fn upstream(what: &str) -> ApiError {
    ApiError(Error::new(
        ErrorCode::UpstreamError,
        format!("the provider failed while {what}"),
    ))
}

/// Streams a media file (an inbound image, voice note, document, ...) from the provider with
/// the channel's credentials. Media is personal data: reading it is audited, and callers who
/// see identifiers masked (analysts, operators without an unmask) may not fetch it.
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
    if !auth.unmasked {
        return Err(ApiError(Error::new(
            ErrorCode::Forbidden,
            "media is personal data; it is not shown to this role without an unmask",
        )));
    }
    if media_id.is_empty()
        || media_id.len() > 128
        || !media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::not_found("media").into());
    }
    let tenant = auth.tenant()?;
    let (channel, token) = {
        let mut tx = state.store.tenant_read(tenant).await?;
        let channel = tx.get_channel(query.channel_id).await?;
        let token = state
            .vault
            .reveal(&mut tx, &secret_purpose(channel.id, "access_token"))
            .await?;
        (channel, token)
    };
    if channel.provider != "meta" {
        return Err(Error::validation(format!(
            "media download is not supported yet for {} channels",
            channel.provider
        ))
        .into());
    }
    let token =
        token.ok_or_else(|| Error::new(ErrorCode::Conflict, "the channel has no access token"))?;
    let mut tx = state.store.tenant(tenant).await?;
    tx.audit(auth.event("media.read", "media", &media_id))
        .await?;
    tx.commit().await?;

    // Step 1: the media's short-lived download URL.
    let info_url = format!(
        "{}/{}/{media_id}",
        channel.graph_api_base_url.trim_end_matches('/'),
        channel.graph_api_version
    );
    let info = state
        .http
        .get(&info_url)
        .bearer_auth(token.as_str())
        .send()
        .await
        .map_err(|_| upstream("looking up the media"))?;
    match info.status().as_u16() {
        200 => {}
        400 | 404 => return Err(Error::not_found("media").into()),
        _ => return Err(upstream("looking up the media")),
    }
    let info: MediaInfo = info
        .json()
        .await
        .map_err(|_| upstream("describing the media"))?;
    // Step 2: the file itself, which needs the same token.
    let file = state
        .http
        .get(&info.url)
        .bearer_auth(token.as_str())
        .send()
        .await
        .map_err(|_| upstream("downloading the media"))?;
    if !file.status().is_success() {
        return Err(upstream("downloading the media"));
    }
    let content_type = info
        .mime_type
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
