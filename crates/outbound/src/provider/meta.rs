//! Meta's Cloud API, and 360dialog, which forwards the same bodies without the phone number
//! id in the path and authenticates with `D360-API-KEY`.

use async_trait::async_trait;
use serde_json::{Value, json};
use waypost_core::{Error, ErrorCode, Result};
use waypost_egress::{EgressClient, EgressRequest};

use super::{
    Attempt, MediaFile, MediaRef, Provider, SendRequest, Upload, checked_answer, management_answer,
    media_answer, read_answer,
};
use crate::template::NewTemplate;

enum Auth {
    Bearer(String),
    Dialog360(String),
}

pub struct MetaClient {
    http: EgressClient,
    /// `{base}/{version}` for Meta, `{base}` for 360dialog.
    root: String,
    phone_number_id: String,
    waba_id: Option<String>,
    auth: Auth,
}

impl MetaClient {
    pub fn cloud_api(
        http: EgressClient,
        base: &str,
        version: &str,
        phone_number_id: &str,
        waba_id: Option<&str>,
        token: String,
    ) -> Self {
        Self {
            http,
            root: format!("{base}/{version}"),
            phone_number_id: phone_number_id.to_string(),
            waba_id: waba_id.map(str::to_string),
            auth: Auth::Bearer(token),
        }
    }

    pub fn dialog360(http: EgressClient, base: &str, api_key: String) -> Self {
        Self {
            http,
            root: base.to_string(),
            phone_number_id: String::new(),
            waba_id: None,
            auth: Auth::Dialog360(api_key),
        }
    }

    fn is_360(&self) -> bool {
        matches!(self.auth, Auth::Dialog360(_))
    }

    fn authorize(&self, request: EgressRequest) -> EgressRequest {
        match &self.auth {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Dialog360(key) => request.header("D360-API-KEY", key),
        }
    }

    fn number_path(&self, tail: &str) -> String {
        if self.is_360() {
            format!("{}/{tail}", self.root)
        } else {
            format!("{}/{}/{tail}", self.root, self.phone_number_id)
        }
    }

    fn templates_url(&self) -> Result<String> {
        if self.is_360() {
            return Ok(format!("{}/v1/configs/templates", self.root));
        }
        let waba = self.waba_id.as_deref().ok_or_else(|| {
            Error::validation(
                "the channel has no waba_id; templates belong to a WhatsApp Business Account",
            )
        })?;
        Ok(format!("{}/{waba}/message_templates", self.root))
    }
}

/// The Cloud API body for a send.
pub fn send_body(request: &SendRequest<'_>) -> Value {
    let mut body = serde_json::to_value(request.content).unwrap_or(Value::Null);
    body["messaging_product"] = json!("whatsapp");
    body["recipient_type"] = json!("individual");
    // A business-scoped user id (`US.123…`) goes in `recipient`, a number in `to`.
    if request.recipient.starts_with('+') {
        body["to"] = json!(request.recipient);
    } else {
        body["recipient"] = json!(request.recipient);
    }
    if let Some(reply_to) = request.reply_to {
        body["context"] = json!({"message_id": reply_to});
    }
    body["biz_opaque_callback_data"] = json!(request.callback_data);
    body
}

fn graph_error(body: &Value) -> (Option<i64>, Option<String>) {
    let error = body.get("error");
    (
        error.and_then(|e| e.get("code")).and_then(Value::as_i64),
        error
            .and_then(|e| {
                e.pointer("/error_data/details")
                    .or_else(|| e.get("message"))
            })
            .and_then(Value::as_str)
            .map(str::to_string),
    )
}

#[async_trait]
impl Provider for MetaClient {
    fn name(&self) -> &'static str {
        if self.is_360() { "360dialog" } else { "meta" }
    }

    async fn send(&self, request: &SendRequest<'_>) -> Attempt {
        let response = self
            .authorize(self.http.post(self.number_path("messages")))
            .json(&send_body(request))
            .send()
            .await;
        read_answer(
            response,
            |b| {
                b.pointer("/messages/0/id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            },
            graph_error,
        )
        .await
    }

    async fn mark_read(&self, provider_message_id: &str) -> Result<()> {
        let response = self
            .authorize(self.http.post(self.number_path("messages")))
            .json(&json!({"messaging_product": "whatsapp", "status": "read", "message_id": provider_message_id}))
            .send()
            .await;
        management_answer(self.name(), response).await.map(drop)
    }

    async fn upload_media(&self, file: Upload, mime_type: &str, filename: &str) -> Result<String> {
        let part = match file.length {
            Some(length) => reqwest::multipart::Part::stream_with_length(file.body, length),
            None => reqwest::multipart::Part::stream(file.body),
        };
        let part = part
            .file_name(filename.to_string())
            .mime_str(mime_type)
            .map_err(|_| Error::validation("the media type is not a valid MIME type"))?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_string())
            .part("file", part);
        let response = self
            .authorize(self.http.post(self.number_path("media")))
            .multipart(form)
            .send()
            .await;
        let body = management_answer(self.name(), response).await?;
        body.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::UpstreamError,
                    "the upload answer has no media id",
                )
            })
    }

    async fn list_templates(&self) -> Result<Vec<Value>> {
        let mut url = format!(
            "{}?fields=id,name,status,category,language,components,parameter_format,quality_score,rejected_reason&limit=100",
            self.templates_url()?
        );
        let mut all = Vec::new();
        // Meta pages with `paging.next`; the bound guards against a provider that loops.
        for _ in 0..100 {
            let response = self.authorize(self.http.get(&url)).send().await;
            let page = management_answer(self.name(), response).await?;
            let data = page
                .get("data")
                .or_else(|| page.get("waba_templates"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            all.extend(data);
            match page.pointer("/paging/next").and_then(Value::as_str) {
                Some(next) => url = next.to_string(),
                None => return Ok(all),
            }
        }
        Err(Error::new(
            ErrorCode::UpstreamError,
            "the provider kept returning template pages",
        ))
    }

    async fn create_template(&self, template: &NewTemplate) -> Result<Value> {
        let response = self
            .authorize(self.http.post(self.templates_url()?))
            .json(template)
            .send()
            .await;
        management_answer(self.name(), response).await
    }

    async fn delete_template(&self, name: &str, provider_id: Option<&str>) -> Result<()> {
        let url = if self.is_360() {
            format!("{}/{name}", self.templates_url()?)
        } else {
            self.templates_url()?
        };
        let mut request = self.authorize(self.http.delete(&url));
        if !self.is_360() {
            request = request.query(&[("name", name)]);
            if let Some(id) = provider_id {
                request = request.query(&[("hsm_id", id)]);
            }
        }
        management_answer(self.name(), request.send().await)
            .await
            .map(drop)
    }

    /// The number's profile, then the account's numbers (in pages) must include it.
    async fn verify_number(&self) -> Result<Value> {
        if self.is_360() {
            return Err(Error::validation("360dialog numbers are not verified"));
        }
        let waba = self.waba_id.as_deref().ok_or_else(|| {
            Error::validation("the channel has no waba_id: the number's account must be named")
        })?;
        let number = &self.phone_number_id;
        let profile_url = format!(
            "{}/{number}?fields=display_phone_number,verified_name,quality_rating,messaging_limit_tier",
            self.root
        );
        let profile = checked_answer(
            "meta",
            self.authorize(self.http.get(profile_url)).send().await,
        )
        .await?;
        let mut url = format!("{}/{waba}/phone_numbers?fields=id&limit=100", self.root);
        // Pages are followed (bounded: an account has at most a few hundred numbers).
        for _ in 0..20 {
            let page =
                checked_answer("meta", self.authorize(self.http.get(&url)).send().await).await?;
            let listed = page
                .get("data")
                .and_then(Value::as_array)
                .is_some_and(|numbers| numbers.iter().any(|n| n["id"] == json!(number)));
            if listed {
                return Ok(profile);
            }
            match page.pointer("/paging/next").and_then(Value::as_str) {
                Some(next) => url = next.to_string(),
                None => break,
            }
        }
        Err(Error::validation(format!(
            "the number {number} does not belong to the WhatsApp Business Account {waba}"
        )))
    }

    /// Two steps: the media id's short-lived URL, then the file with the same credentials.
    /// 360dialog serves the file from its own host in place of Meta's.
    async fn fetch_media(&self, media: &MediaRef<'_>) -> Result<MediaFile> {
        let id = media
            .id
            .ok_or_else(|| Error::validation("this message carries no media id"))?;
        let info = self
            .authorize(self.http.get(format!("{}/{id}", self.root)))
            .send()
            .await;
        let info: Value = media_answer(self.name(), info)?
            .json()
            .await
            .map_err(|_| Error::new(ErrorCode::UpstreamError, "the media lookup was not JSON"))?;
        let mut url = info
            .get("url")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .ok_or_else(|| Error::new(ErrorCode::UpstreamError, "the media lookup has no url"))?;
        if self.is_360() {
            let base = url::Url::parse(&self.root)
                .map_err(|_| Error::validation("the channel's API base URL is not a URL"))?;
            url.set_scheme(base.scheme()).ok();
            url.set_host(base.host_str()).ok();
            url.set_port(base.port()).ok();
        }
        let file = self.authorize(self.http.get(url.as_str())).send().await;
        Ok(MediaFile {
            response: media_answer(self.name(), file)?,
            mime_type: info
                .get("mime_type")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}
