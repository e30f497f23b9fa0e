//! Gupshup's WhatsApp API: form-encoded with the message as a JSON string, `apikey` header,
//! templates by template id.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use waypost_core::Result;
use waypost_egress::EgressClient;

use super::{
    Attempt, MediaFile, MediaHosts, MediaRef, Provider, SendRequest, media_answer, read_answer,
};
use crate::message::OutboundContent;

pub struct GupshupClient {
    pub http: EgressClient,
    pub media_hosts: Arc<MediaHosts>,
    pub base: String,
    pub api_key: String,
    /// The business number, digits only.
    pub source: String,
    /// The Gupshup app name (`src.name`).
    pub app_name: String,
}

/// Gupshup's message object for a send (`None` for templates, sent separately).
pub fn message_json(content: &OutboundContent) -> Option<Value> {
    let link = |m: &crate::message::Media| m.link.clone().unwrap_or_default();
    Some(match content {
        OutboundContent::Text { text } => {
            json!({"type": "text", "text": text.body, "previewUrl": text.preview_url})
        }
        OutboundContent::Image { image } => {
            json!({"type": "image", "originalUrl": link(image), "previewUrl": link(image), "caption": image.caption})
        }
        OutboundContent::Video { video } => {
            json!({"type": "video", "url": link(video), "caption": video.caption})
        }
        OutboundContent::Audio { audio } => json!({"type": "audio", "url": link(audio)}),
        OutboundContent::Document { document } => {
            json!({"type": "file", "url": link(document), "filename": document.filename, "caption": document.caption})
        }
        OutboundContent::Sticker { sticker } => json!({"type": "sticker", "url": link(sticker)}),
        OutboundContent::Location { location } => json!({"type": "location",
            "latitude": location.latitude, "longitude": location.longitude,
            "name": location.name, "address": location.address}),
        _ => return None,
    })
}

#[async_trait]
impl Provider for GupshupClient {
    fn name(&self) -> &'static str {
        "gupshup"
    }

    async fn send(&self, request: &SendRequest<'_>) -> Attempt {
        let destination = request.recipient.trim_start_matches('+').to_string();
        let mut form = vec![
            ("channel".to_string(), "whatsapp".to_string()),
            ("source".to_string(), self.source.clone()),
            ("destination".to_string(), destination),
            ("src.name".to_string(), self.app_name.clone()),
        ];
        let path = if let OutboundContent::Template { template } = request.content {
            let params: Vec<Value> = template
                .components
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some("body"))
                .filter_map(|c| c.get("parameters").and_then(Value::as_array))
                .flatten()
                .map(|p| p.get("text").cloned().unwrap_or(Value::Null))
                .collect();
            form.push((
                "template".into(),
                json!({"id": template.name, "params": params}).to_string(),
            ));
            "wa/api/v1/template/msg"
        } else {
            let message = message_json(request.content).unwrap_or(Value::Null);
            form.push(("message".into(), message.to_string()));
            "wa/api/v1/msg"
        };
        let response = self
            .http
            .post(format!("{}/{path}", self.base))
            .header("apikey", &self.api_key)
            .form(&form)
            .send()
            .await;
        read_answer(
            response,
            |b| {
                (b.get("status").and_then(Value::as_str) == Some("submitted"))
                    .then(|| {
                        b.get("messageId")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .flatten()
            },
            |b| {
                (
                    None,
                    b.get("message").and_then(Value::as_str).map(str::to_string),
                )
            },
        )
        .await
    }

    /// Gupshup's media URLs are signed links: fetched as they are.
    async fn fetch_media(&self, media: &MediaRef<'_>) -> Result<MediaFile> {
        let url = media.url("gupshup", &self.media_hosts, &self.base)?;
        media_answer("gupshup", self.http.get(&url).send().await).map(MediaFile::from)
    }
}
