//! Twilio's Messages API: form-encoded, `whatsapp:` addresses, media by URL, templates as
//! Content API templates (`ContentSid` + `ContentVariables`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use waypost_core::Result;
use waypost_egress::EgressClient;

use super::{
    Attempt, MediaFile, MediaHosts, MediaRef, Provider, SendRequest, media_answer, read_answer,
    same_host,
};
use crate::message::OutboundContent;

pub struct TwilioClient {
    pub http: EgressClient,
    pub media_hosts: Arc<MediaHosts>,
    pub base: String,
    pub account_sid: String,
    pub auth_token: String,
    /// The sender, E.164.
    pub from: String,
    pub status_callback: Option<String>,
}

/// The form fields of a send. Templates: the template name is the Content SID (`HX…`) and
/// body parameters become `ContentVariables` keyed `1`, `2`, ... (or by parameter name).
pub fn send_form(from: &str, request: &SendRequest<'_>) -> Vec<(String, String)> {
    let mut form = vec![
        ("From".to_string(), format!("whatsapp:{from}")),
        ("To".to_string(), format!("whatsapp:{}", request.recipient)),
    ];
    let mut push = |k: &str, v: &str| form.push((k.to_string(), v.to_string()));
    match request.content {
        OutboundContent::Text { text } => push("Body", &text.body),
        OutboundContent::Image { image: m }
        | OutboundContent::Video { video: m }
        | OutboundContent::Audio { audio: m }
        | OutboundContent::Document { document: m } => {
            push("MediaUrl", m.link.as_deref().unwrap_or_default());
            if let Some(caption) = &m.caption {
                push("Body", caption);
            }
        }
        OutboundContent::Location { location } => {
            push(
                "PersistentAction",
                &format!("geo:{},{}", location.latitude, location.longitude),
            );
            push("Body", location.name.as_deref().unwrap_or("Location"));
        }
        OutboundContent::Template { template } => {
            push("ContentSid", &template.name);
            let mut variables = Map::new();
            let body = template
                .components
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some("body"))
                .filter_map(|c| c.get("parameters").and_then(Value::as_array))
                .flatten();
            for (i, p) in body.enumerate() {
                let key = p
                    .get("parameter_name")
                    .and_then(Value::as_str)
                    .map_or_else(|| (i + 1).to_string(), str::to_string);
                let value = p.get("text").cloned().unwrap_or(Value::Null);
                variables.insert(key, value);
            }
            push("ContentVariables", &Value::Object(variables).to_string());
        }
        // `supports` refuses the rest before anything is queued.
        _ => {}
    }
    form
}

#[async_trait]
impl Provider for TwilioClient {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, request: &SendRequest<'_>) -> Attempt {
        let mut form = send_form(&self.from, request);
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback".into(), callback.clone()));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.account_sid
        );
        let response = self
            .http
            .post(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await;
        read_answer(
            response,
            |b| b.get("sid").and_then(Value::as_str).map(str::to_string),
            |b| {
                (
                    b.get("code").and_then(Value::as_i64),
                    b.get("message").and_then(Value::as_str).map(str::to_string),
                )
            },
        )
        .await
    }

    /// Media URLs are on Twilio's API and need the account's credentials (redirects then go
    /// to storage without them).
    async fn fetch_media(&self, media: &MediaRef<'_>) -> Result<MediaFile> {
        let url = media.url("twilio", &self.media_hosts, &self.base)?;
        let mut request = self.http.get(&url);
        if same_host(&url, &self.base) {
            request = request.basic_auth(&self.account_sid, Some(&self.auth_token));
        }
        media_answer("twilio", request.send().await).map(MediaFile::from)
    }
}
