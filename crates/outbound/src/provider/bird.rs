//! Bird's Channels API: JSON to `/workspaces/{workspace}/channels/{channel}/messages` with
//! `Authorization: AccessKey …`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use waypost_core::Result;
use waypost_egress::EgressClient;

use super::{
    Attempt, MediaFile, MediaHosts, MediaRef, Provider, ProviderFailure, SendRequest, media_answer,
    read_answer, same_host,
};
use crate::message::{Media, OutboundContent};

pub struct BirdClient {
    pub http: EgressClient,
    pub media_hosts: Arc<MediaHosts>,
    pub base: String,
    pub api_key: String,
    /// `workspace_id/channel_id`.
    pub account: String,
}

/// Bird's message body for a send.
pub fn body_json(content: &OutboundContent) -> Option<Value> {
    let file =
        |m: &Media| json!({"mediaUrl": m.link, "filename": m.filename, "altText": m.caption});
    Some(match content {
        OutboundContent::Text { text } => json!({"type": "text", "text": {"text": text.body}}),
        OutboundContent::Image { image } => {
            json!({"type": "image", "image": {"images": [{"mediaUrl": image.link, "altText": image.caption}]}})
        }
        OutboundContent::Video { video: m }
        | OutboundContent::Audio { audio: m }
        | OutboundContent::Document { document: m } => {
            json!({"type": "file", "file": {"files": [file(m)]}})
        }
        OutboundContent::Location { location } => json!({"type": "location", "location": {
            "coordinates": {"latitude": location.latitude, "longitude": location.longitude},
            "label": location.name}}),
        _ => return None,
    })
}

#[async_trait]
impl Provider for BirdClient {
    fn name(&self) -> &'static str {
        "bird"
    }

    async fn send(&self, request: &SendRequest<'_>) -> Attempt {
        let Some((workspace, channel)) = self.account.split_once('/') else {
            return Attempt::Rejected(ProviderFailure {
                http_status: 0,
                code: None,
                message: "the channel's provider_account must be workspace_id/channel_id".into(),
            });
        };
        let body = json!({
            "receiver": {"contacts": [{"identifierKey": "phonenumber", "identifierValue": request.recipient}]},
            "body": body_json(request.content).unwrap_or(Value::Null),
            "reference": request.callback_data,
        });
        let response = self
            .http
            .post(format!(
                "{}/workspaces/{workspace}/channels/{channel}/messages",
                self.base
            ))
            .header("authorization", format!("AccessKey {}", self.api_key))
            .json(&body)
            .send()
            .await;
        read_answer(
            response,
            |b| b.get("id").and_then(Value::as_str).map(str::to_string),
            |b| {
                (
                    None,
                    b.get("message")
                        .or_else(|| b.get("code"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                )
            },
        )
        .await
    }

    async fn fetch_media(&self, media: &MediaRef<'_>) -> Result<MediaFile> {
        let url = media.url("bird", &self.media_hosts, &self.base)?;
        let mut request = self.http.get(&url);
        if same_host(&url, &self.base) {
            request = request.header("authorization", format!("AccessKey {}", self.api_key));
        }
        media_answer("bird", request.send().await).map(MediaFile::from)
    }
}
