use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use waypost_core::{ChannelId, ContactId, Error, ErrorCode, MessageId};
use waypost_outbound::{
    OutboundContent, QueueRequest, Recipient,
    jobs::mark_read_job,
    message::{MEDIA_TYPES, whatsapp_media_type},
    provider::Upload,
};
use waypost_store::{LANE_BULK, LANE_TRANSACTIONAL, StoredMessage};

use crate::{
    ApiError, AppState,
    auth::Auth,
    problem::{ApiPath, ApiQuery, Problem},
    routes::channels::provider_client,
};

/// A message to send. The content fields are the Cloud API's: `type` plus the object of that
/// type (`text`, `image`, `template`, ...).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SendMessage {
    pub channel_id: ChannelId,
    /// A phone number in E.164 or a business-scoped user id; or give `contact_id`.
    pub to: Option<String>,
    pub contact_id: Option<ContactId>,
    #[serde(flatten)]
    pub content: OutboundContent,
    /// Reply to a message: `{"message_id": "<provider id>"}`.
    pub context: Option<ReplyContext>,
    /// Bulk traffic (campaigns) waits behind transactional sends on the same channel.
    #[serde(default)]
    pub bulk: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReplyContext {
    pub message_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageAccepted {
    pub id: MessageId,
    /// `queued` when new; a replayed idempotency key shows the message's current status.
    pub status: String,
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

fn accepted(id: MessageId, status: String, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(MessageAccepted { id, status })).into_response();
    if replayed && let Ok(v) = HeaderValue::from_str("true") {
        response.headers_mut().insert("idempotent-replayed", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/messages/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The first answer to an idempotency key, if the key was used in the last 24 hours.
async fn replay(
    state: &AppState,
    auth: &Auth,
    key: &str,
    hash: &str,
) -> Result<Option<Response>, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let Some((stored_hash, id)) = tx.idempotent_message(key).await? else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(Error::new(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request in the last 24 hours",
        )
        .into());
    }
    let message = tx.get_message(id).await?;
    Ok(Some(accepted(
        id,
        message.status.unwrap_or_else(|| "queued".into()),
        true,
    )))
}

/// Queues a message. Everything that could refuse it is checked first: the 24-hour window
/// (`window_closed`), marketing consent (`contact_opted_out`), the template and its
/// parameters (`template_invalid`), and the recipient. The message and its send job are
/// written together; the answer is 202 and the status then follows the message (`queued`,
/// `sending`, `accepted`, `sent`, `delivered`, `read`, or `failed` / `unknown`).
///
/// With an `Idempotency-Key` header the same key within 24 hours answers with the first
/// message and never sends again (a different body with the same key is refused).
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages",
    request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe for 24 hours")),
    responses(
        (status = ACCEPTED, body = MessageAccepted),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let hash = hex::encode(Sha256::digest(&body));
    if let Some(key) = &key
        && let Some(response) = replay(&state, &auth, key, &hash).await?
    {
        return Ok(response);
    }
    // Read from the raw bytes (their hash binds the idempotency key), with the same
    // problem codes as every other JSON body.
    let Json(request) = Json::<SendMessage>::from_bytes(&body)?;
    let tenant = auth.tenant()?;
    let mut tx = state.store.tenant(tenant).await?;
    let channel = tx.get_channel(request.channel_id).await?;
    let recipient = match (&request.to, request.contact_id) {
        (Some(to), None) => Recipient::resolve(&mut tx, to).await?,
        (None, Some(contact)) => {
            let contact = tx.get_contact(contact).await?;
            match (contact.wa_id, contact.phone, contact.bsuid) {
                (Some(wa_id), _, _) => Recipient::WaId(wa_id),
                (None, Some(phone), _) => Recipient::parse(&phone)?,
                (None, None, Some(bsuid)) => Recipient::Bsuid(bsuid),
                (None, None, None) => {
                    return Err(Error::validation("the contact has no number or user id").into());
                }
            }
        }
        _ => return Err(Error::validation("give exactly one of to or contact_id").into()),
    };
    let queued = waypost_outbound::queue(
        &mut tx,
        &channel,
        QueueRequest {
            recipient,
            content: request.content,
            reply_to: request.context.map(|c| c.message_id),
            lane: if request.bulk {
                LANE_BULK
            } else {
                LANE_TRANSACTIONAL
            },
            idempotency: key.clone().map(|k| (k, hash.clone())),
        },
    )
    .await;
    let committed = match queued {
        Ok(id) => match tx.audit(auth.event("message.send", "message", id)).await {
            Ok(_) => tx.commit().await.map(|()| id),
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    let id = match committed {
        Ok(id) => id,
        // Two requests raced with one key: the first one's answer is the answer.
        Err(err) if err.code() == ErrorCode::Conflict && key.is_some() => {
            let key = key.as_deref().unwrap_or_default();
            return match replay(&state, &auth, key, &hash).await? {
                Some(response) => Ok(response),
                None => Err(err.into()),
            };
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(wake) = &state.dispatch_wake {
        wake.wake(channel.id);
    }
    Ok(accepted(id, "queued".into(), false))
}

/// One message with its current status (and the provider's error when it failed).
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages",
    params(("id" = MessageId, Path, description = "Message id")),
    responses((status = OK, body = StoredMessage), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn get_message(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<MessageId>,
) -> Result<Json<StoredMessage>, ApiError> {
    let tenant = auth.tenant()?;
    let mut tx = state.store.tenant(tenant).await?;
    let message = tx.get_message(id).await?;
    tx.audit(auth.event("message.read", "message", id)).await?;
    tx.commit().await?;
    Ok(Json(auth.shown(message)))
}

/// Marks an inbound message read (the customer sees blue ticks). Runs as a job: 202.
#[utoipa::path(post, path = "/api/v1/messages/{id}/read", tag = "messages",
    params(("id" = MessageId, Path, description = "An inbound message id")),
    responses((status = ACCEPTED), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn mark_read(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<MessageId>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let message = tx.get_message(id).await?;
    if message.direction != "inbound" || message.provider_message_id.is_none() {
        return Err(Error::validation("only inbound messages can be marked read").into());
    }
    let (channel, _) = tx.message_route(id).await?;
    tx.enqueue(mark_read_job(channel, id)?).await?;
    tx.audit(auth.event("message.mark_read", "message", id))
        .await?;
    tx.commit().await?;
    if let Some(wake) = &state.worker_wake {
        wake.notify_waiters();
    }
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The channel whose provider stores the file.
    pub channel_id: ChannelId,
    pub filename: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// Use as `image.id`, `document.id`, ... in a send (valid 30 days at Meta).
    pub id: String,
}

/// Uploads a file for sending: the request body is the file (up to 100 MiB, WhatsApp's
/// largest document) and `Content-Type` its type, one WhatsApp carries. The file streams to
/// the provider as it arrives.
#[utoipa::path(post, path = "/api/v1/media", tag = "messages",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = CREATED, body = Uploaded),
        (status = PAYLOAD_TOO_LARGE, body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = BAD_GATEWAY, body = Problem, content_type = "application/problem+json")))]
pub async fn upload_media(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(whatsapp_media_type)
        .map(|(essence, _)| essence)
        .ok_or_else(|| {
            let types: Vec<&str> = MEDIA_TYPES.iter().map(|(t, _)| *t).collect();
            Error::validation(format!(
                "Content-Type must be the file's media type, one WhatsApp carries: {}",
                types.join(", ")
            ))
        })?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length == Some(0) {
        return Err(Error::validation("the body must be the file").into());
    }
    let filename = query.filename.unwrap_or_else(|| "upload".into());
    if filename.is_empty() || filename.chars().count() > 240 {
        return Err(Error::validation("filename must be 1 to 240 characters").into());
    }
    let (channel, client) = provider_client(&state, &auth, query.channel_id).await?;
    let (body, too_large) = watch_limit(body);
    let id = client
        .upload_media(Upload { body, length }, mime, &filename)
        .await
        .map_err(|err| {
            if too_large.load(Ordering::Acquire) {
                Error::new(
                    ErrorCode::PayloadTooLarge,
                    "the file may be at most 100 MiB",
                )
            } else {
                err
            }
        })?;
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    tx.audit(auth.event("media.upload", "channel", channel.id))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Uploaded { id })))
}

/// The request body as a stream for the provider, and a flag raised if it broke the route's
/// size limit on the way (a chunked body declares no length up front).
fn watch_limit(body: Body) -> (reqwest::Body, Arc<AtomicBool>) {
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        chunk.map_err(|err| {
            let limit = std::error::Error::source(&err)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if limit {
                flag.store(true, Ordering::Release);
            }
            std::io::Error::other(err)
        })
    });
    (reqwest::Body::wrap_stream(stream), too_large)
}
