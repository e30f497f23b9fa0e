use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use serde::Deserialize;
use waypost_core::{ChannelId, Error, ErrorCode, MessageId};
use waypost_outbound::{message::whatsapp_media_type, provider::MediaRef};

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

/// What a downloaded file is called and how it is described to the browser.
struct Served<'a> {
    mime_type: Option<String>,
    filename: Option<&'a str>,
    fallback_name: String,
}

/// Fetches the file through the channel's provider (audited) and streams it back so that it
/// can never run in our origin: a download (`attachment`), in a sandbox, typed only as one of
/// WhatsApp's media types (else `application/octet-stream`), never cached.
async fn stream_media(
    state: &AppState,
    auth: &Auth,
    channel: ChannelId,
    media: MediaRef<'_>,
    served: Served<'_>,
    audited_as: &str,
) -> Result<Response, ApiError> {
    let (_, client) = provider_client(state, auth, channel).await?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.audit(auth.event("media.read", "media", audited_as))
        .await?;
    tx.commit().await?;
    let media = client.fetch_media(&media).await?;
    let file = media.response;
    let declared = served.mime_type.or(media.mime_type).or_else(|| {
        file.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let kind = declared.as_deref().and_then(whatsapp_media_type);
    let content_type = kind.map_or("application/octet-stream", |(essence, _)| essence);
    let filename = attachment_name(served.filename, &served.fallback_name, kind);
    let stream = file.bytes_stream().map_err(std::io::Error::other);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

/// A file name safe in a header and on any disk: the sender's name reduced to letters,
/// digits, `.`, `-` and `_` (else ours), ending in the extension of the type it is served as.
fn attachment_name(
    given: Option<&str>,
    fallback: &str,
    kind: Option<(&'static str, &'static str)>,
) -> String {
    let clean = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect::<String>()
            .trim_matches('.')
            .to_string()
    };
    let stem = given
        .map(clean)
        .filter(|n| n.chars().any(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| clean(fallback));
    let extension = kind.map_or("bin", |(_, ext)| ext);
    if stem
        .rsplit_once('.')
        .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case(extension))
    {
        stem
    } else {
        format!("{stem}.{extension}")
    }
}

/// Streams a media file by the provider's media id (Meta and 360dialog channels), with the
/// channel's credentials. Reading it is audited.
#[utoipa::path(get, path = "/api/v1/media/{id}", tag = "conversations",
    params(("id" = String, Path, description = "The provider's media id, from a message"), MediaQuery),
    responses(
        (status = OK, description = "The file, as an attachment typed as one of WhatsApp's media types (else application/octet-stream), sandboxed"),
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
    let served = Served {
        mime_type: None,
        filename: None,
        fallback_name: format!("media-{media_id}"),
    };
    stream_media(&state, &auth, query.channel_id, media, served, &media_id).await
}

/// Streams the media of an inbound message (image, video, voice note, document, sticker)
/// from whichever provider it came through: by media id for Meta and 360dialog, by the
/// webhook's URL for Twilio, Gupshup and Bird. Reading it is audited.
#[utoipa::path(get, path = "/api/v1/messages/{id}/media", tag = "conversations",
    params(("id" = MessageId, Path, description = "An inbound message with media")),
    responses(
        (status = OK, description = "The file, as an attachment typed as one of WhatsApp's media types (else application/octet-stream), sandboxed"),
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
    let served = Served {
        mime_type: text("mime_type").map(str::to_string),
        filename: text("filename"),
        fallback_name: format!("message-{id}"),
    };
    stream_media(&state, &auth, channel, reference, served, &id.to_string()).await
}

#[cfg(test)]
mod tests {
    use super::attachment_name;

    #[test]
    fn attachment_names_are_reduced_and_typed() {
        let pdf = Some(("application/pdf", "pdf"));
        assert_eq!(
            attachment_name(Some("Invoice 7.pdf"), "m", pdf),
            "Invoice_7.pdf"
        );
        assert_eq!(
            attachment_name(Some("\"x\r\nSet-Cookie: a=b.html"), "m", None),
            "_x__Set-Cookie__a_b.html.bin"
        );
        assert_eq!(
            attachment_name(Some("../../"), "media-1", pdf),
            "media-1.pdf"
        );
        assert_eq!(attachment_name(None, "message-9", None), "message-9.bin");
    }
}
