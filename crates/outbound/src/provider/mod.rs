//! One trait for every provider's send API, and what to do about each answer.

mod bird;
mod gupshup;
mod meta;
mod twilio;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use waypost_core::{ChannelId, Error, ErrorCode, Result};
use waypost_egress::{EgressClient, SendError};
use waypost_store::{Channel, TenantScope, Tx};
use waypost_vault::Vault;

use crate::{message::OutboundContent, template::NewTemplate};

/// Which credentials each provider's client needs (names as stored in the vault).
pub fn credential_names(provider: &str) -> &'static [&'static str] {
    match provider {
        "meta" => &["access_token", "app_secret"],
        "360dialog" => &["api_key"],
        "twilio" => &["account_sid", "auth_token"],
        "gupshup" => &["api_key"],
        "bird" => &["api_key", "signing_key"],
        _ => &[],
    }
}

/// The default API base of each provider (a channel may point elsewhere, e.g. a simulator).
pub fn default_base_url(provider: &str) -> &'static str {
    match provider {
        "360dialog" => "https://waba-v2.360dialog.io",
        "twilio" => "https://api.twilio.com",
        "gupshup" => "https://api.gupshup.io",
        "bird" => "https://api.bird.com",
        _ => "https://graph.facebook.com",
    }
}

/// What one send attempt came to, before deciding what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The provider accepted the message and named it.
    Accepted(String),
    /// The provider answered with an error: nothing was sent.
    Rejected(ProviderFailure),
    /// The request never left (connection refused, DNS): nothing was sent.
    NotSent(String),
    /// The request may have reached the provider (timeout, cut connection, gateway error).
    Ambiguous(String),
    /// The egress policy refused the destination: nothing connected.
    Refused(String),
}

/// A provider's error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFailure {
    pub http_status: u16,
    pub code: Option<i64>,
    pub message: String,
}

impl ProviderFailure {
    pub fn to_json(&self, provider: &str) -> Value {
        serde_json::json!({
            "provider": provider,
            "http_status": self.http_status,
            "code": self.code,
            "message": self.message,
            "explanation": explain(provider, self.code),
        })
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Hold the whole number for this long, then retry the message.
    RetryChannel(Duration),
    /// Retry only this recipient's message after this long.
    RetryRecipient(Duration),
    /// Retry this message after its backoff.
    Retry,
    /// Never send it; `opt_out` records a marketing opt-out for the contact.
    Fail { opt_out: bool },
    /// Meta flagged spam or a payment problem: keep the message queued and pause the channel
    /// until a person resumes it.
    PauseChannel,
    /// The credentials are invalid: keep the message queued and hold the channel until new
    /// credentials are stored.
    CredentialsInvalid,
}

/// Meta's error codes, by the table in the reference: retried, per recipient, circuit
/// breakers, or permanent.
fn react_meta(code: i64, attempts: i64) -> Reaction {
    match code {
        130_429 => Reaction::RetryChannel(Duration::from_secs(1)),
        // 4^n seconds: 1, 4, 16, 64, capped at ~4 minutes.
        131_056 => Reaction::RetryRecipient(Duration::from_secs(
            4u64.saturating_pow(u32::try_from(attempts.clamp(1, 5) - 1).unwrap_or(0)),
        )),
        4 | 80_007 => Reaction::RetryChannel(Duration::from_secs(60)),
        131_057 => Reaction::RetryChannel(Duration::from_secs(60)),
        131_000 | 131_016 | 133_004 | 1 | 2 => Reaction::Retry,
        131_048 | 131_042 => Reaction::PauseChannel,
        190 => Reaction::CredentialsInvalid,
        131_050 => Reaction::Fail { opt_out: true },
        _ => Reaction::Fail { opt_out: false },
    }
}

/// Decides what an answer means for a provider.
pub fn react(provider: &str, failure: &ProviderFailure, attempts: i64) -> Reaction {
    match provider {
        "meta" | "360dialog" => match failure.code {
            Some(code) => react_meta(code, attempts),
            None => react_http(failure.http_status),
        },
        "twilio" => match failure.code {
            Some(63_016 | 63_024 | 21_211 | 21_614) => Reaction::Fail { opt_out: false },
            Some(63_018 | 20_429 | 14_107) => Reaction::RetryChannel(Duration::from_secs(1)),
            Some(20_003) => Reaction::CredentialsInvalid,
            _ => react_http(failure.http_status),
        },
        _ => react_http(failure.http_status),
    }
}

/// For answers without a provider code: limits and outages are retried, bad credentials
/// hold the channel, anything else is the request's fault.
fn react_http(status: u16) -> Reaction {
    match status {
        429 => Reaction::RetryChannel(Duration::from_secs(1)),
        401 | 403 => Reaction::CredentialsInvalid,
        500..=599 => Reaction::Retry,
        _ => Reaction::Fail { opt_out: false },
    }
}

/// A plain-language explanation of the codes users meet most.
pub fn explain(provider: &str, code: Option<i64>) -> Option<&'static str> {
    let text = match (provider, code?) {
        ("twilio", 63_016) | (_, 131_047 | 470) => {
            "More than 24 hours passed since the customer last wrote; only a template can be sent."
        }
        (_, 131_026) => {
            "The message could not be delivered: the number may not be on WhatsApp or the app is outdated."
        }
        (_, 131_050) => "The customer stopped marketing messages from this business.",
        (_, 130_429) => "The number's throughput limit was reached; the message is retried.",
        (_, 131_056) => "Too many messages to this customer too fast; the message is retried.",
        (_, 131_048) => {
            "Meta limited this number because people flagged messages as spam; sending is paused."
        }
        (_, 190) => "The access token expired or was revoked; store new credentials.",
        (_, 131_051) => "WhatsApp does not support this message type.",
        (_, 368) => "Meta temporarily blocked this account for a policy violation.",
        (_, 132_000) => "The template's parameter count does not match.",
        (_, 132_001) => "The template does not exist in this language or is not approved.",
        (_, 132_015) => "The template is paused because of low quality.",
        (_, 132_016) => "The template is disabled.",
        _ => return None,
    };
    Some(text)
}

/// The channel's credentials, by name.
pub type Credentials = BTreeMap<String, String>;

/// Where a channel's credential is kept in the vault.
pub fn secret_purpose(channel: ChannelId, name: &str) -> String {
    format!("channel:{channel}:{name}")
}

/// Reads a channel's credentials from the vault (inside the caller's transaction).
pub async fn load_credentials(
    tx: &mut Tx<TenantScope>,
    vault: &Vault,
    channel: &Channel,
) -> Result<Credentials> {
    let mut credentials = Credentials::new();
    for name in credential_names(&channel.provider) {
        if let Some(secret) = vault.reveal(tx, &secret_purpose(channel.id, name)).await? {
            credentials.insert((*name).to_string(), secret.as_str().to_string());
        }
    }
    Ok(credentials)
}

/// Whether a provider can send this kind of content at all (checked at the API).
pub fn supports(provider: &str, content: &OutboundContent) -> Result<()> {
    let kind = content.kind();
    let ok = match provider {
        "meta" | "360dialog" => true,
        "twilio" => matches!(
            kind,
            "text" | "image" | "video" | "audio" | "document" | "template" | "location"
        ),
        "gupshup" => matches!(
            kind,
            "text" | "image" | "video" | "audio" | "document" | "sticker" | "location" | "template"
        ),
        "bird" => matches!(
            kind,
            "text" | "image" | "video" | "audio" | "document" | "location"
        ),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::validation(format!(
            "{provider} channels cannot send {kind} messages through Waypost yet"
        )))
    }
}

fn unsupported(provider: &str, what: &str) -> Error {
    Error::validation(format!("{what} is not supported for {provider} channels"))
}

/// One send request, provider-neutral.
pub struct SendRequest<'a> {
    /// E.164 (`+15551234567`) or a business-scoped user id.
    pub recipient: &'a str,
    pub content: &'a OutboundContent,
    /// The provider id of the message this replies to.
    pub reply_to: Option<&'a str>,
    /// Our message id, echoed by Meta in status webhooks (`biz_opaque_callback_data`).
    pub callback_data: &'a str,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    async fn send(&self, request: &SendRequest<'_>) -> Attempt;

    async fn mark_read(&self, provider_message_id: &str) -> Result<()> {
        let _ = provider_message_id;
        Err(unsupported(self.name(), "marking messages read"))
    }

    /// Uploads a file as it streams in, never holding it whole.
    async fn upload_media(&self, file: Upload, mime_type: &str, filename: &str) -> Result<String> {
        let _ = (file, mime_type, filename);
        Err(unsupported(self.name(), "uploading media"))
    }

    /// Every template of the account, following the provider's pages.
    async fn list_templates(&self) -> Result<Vec<Value>> {
        Err(unsupported(self.name(), "syncing templates"))
    }

    /// Submits a template; the provider's answer (`id`, `status`, `category`).
    async fn create_template(&self, template: &NewTemplate) -> Result<Value> {
        let _ = template;
        Err(unsupported(self.name(), "creating templates"))
    }

    async fn delete_template(&self, name: &str, provider_id: Option<&str>) -> Result<()> {
        let _ = (name, provider_id);
        Err(unsupported(self.name(), "deleting templates"))
    }

    /// Starts downloading an inbound message's media file (the answer streams the bytes).
    async fn fetch_media(&self, media: &MediaRef<'_>) -> Result<MediaFile>;

    /// Checks, with the channel's own credentials, that its number exists and belongs to the
    /// account it names; the number's profile. `unavailable` when the provider could not be
    /// asked (worth retrying), any other error when it said no.
    async fn verify_number(&self) -> Result<Value> {
        Err(unsupported(self.name(), "verifying numbers"))
    }
}

/// Where an inbound media file is: the provider's media id (Meta, 360dialog) or its URL
/// (Twilio, Gupshup, Bird), as the webhook gave them.
#[derive(Debug, Clone, Copy)]
pub struct MediaRef<'a> {
    pub id: Option<&'a str>,
    pub url: Option<&'a str>,
}

impl MediaRef<'_> {
    /// The webhook's media URL, if it is on one of the provider's media hosts or on the
    /// channel's own API host: a webhook body must not choose what Waypost fetches.
    fn url(&self, provider: &str, hosts: &MediaHosts, base: &str) -> Result<url::Url> {
        let url = self
            .url
            .and_then(|u| url::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| {
                Error::validation(format!("this {provider} message carries no media URL"))
            })?;
        if same_host(&url, base) || hosts.serves(provider, &url) {
            return Ok(url);
        }
        Err(Error::new(
            ErrorCode::EgressRefused,
            format!(
                "the egress policy refuses {}: not a {provider} media host (egress.media_hosts.{provider})",
                url.host_str().unwrap_or_default()
            ),
        ))
    }
}

/// The hosts (and their subdomains) each BSP serves inbound media from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaHosts(BTreeMap<String, Vec<String>>);

impl Default for MediaHosts {
    /// Twilio's media URLs are on its API host (they redirect to its storage); Gupshup's on
    /// `filemanager.gupshup.io`; Bird's on `media.api.bird.com` (and MessageBird's older
    /// hosts).
    fn default() -> Self {
        let hosts = |list: &[&str]| list.iter().map(|h| (*h).to_string()).collect();
        Self(BTreeMap::from([
            ("twilio".to_string(), hosts(&["twilio.com"])),
            ("gupshup".to_string(), hosts(&["gupshup.io"])),
            ("bird".to_string(), hosts(&["bird.com", "messagebird.com"])),
        ]))
    }
}

impl MediaHosts {
    /// Replaces one provider's list (`[egress.media_hosts] twilio = [...]`).
    #[must_use]
    pub fn with(mut self, provider: &str, hosts: Vec<String>) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        self.0.insert(provider.to_string(), hosts);
        self
    }

    fn serves(&self, provider: &str, url: &url::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.get(provider).is_some_and(|suffixes| {
            suffixes.iter().any(|s| {
                host == *s
                    || host
                        .strip_suffix(s.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            })
        })
    }
}

/// What every provider client shares: the egress-checked HTTP client and where BSPs may
/// serve media from. Cheap to clone.
#[derive(Clone)]
pub struct ProviderHttp {
    pub client: EgressClient,
    pub media_hosts: Arc<MediaHosts>,
}

impl ProviderHttp {
    pub fn new(client: EgressClient) -> Self {
        Self {
            client,
            media_hosts: Arc::new(MediaHosts::default()),
        }
    }
}

/// A file on its way to the provider: the request's body as it streams in, and its length
/// when the client declared one.
pub struct Upload {
    pub body: reqwest::Body,
    pub length: Option<u64>,
}

/// A media download under way, and its type when the provider named it before the file.
#[derive(Debug)]
pub struct MediaFile {
    pub response: reqwest::Response,
    pub mime_type: Option<String>,
}

impl From<reqwest::Response> for MediaFile {
    fn from(response: reqwest::Response) -> Self {
        Self {
            response,
            mime_type: None,
        }
    }
}

/// Whether `url` is on the provider's own API host: credentials go nowhere else (a media URL
/// comes from a webhook, and a redirect or a foreign host must not receive them).
fn same_host(url: &url::Url, base: &str) -> bool {
    url::Url::parse(base).is_ok_and(|b| b.host_str() == url.host_str() && b.port() == url.port())
}

/// A media download's answer: the provider's failure becomes `not_found` or `upstream_error`.
fn media_answer(
    provider: &str,
    response: std::result::Result<reqwest::Response, SendError>,
) -> Result<reqwest::Response> {
    let response = response.map_err(|e| e.into_error(&format!("{provider} (for the media)")))?;
    match response.status().as_u16() {
        200..=299 => Ok(response),
        400 | 404 | 410 => Err(Error::not_found("media")),
        status => Err(Error::new(
            ErrorCode::UpstreamError,
            format!("{provider} answered {status} for the media"),
        )),
    }
}

/// Where a client sends, and how it authenticates.
pub struct ClientConfig {
    pub http: ProviderHttp,
    /// Twilio posts statuses here (our webhook URL for the channel).
    pub status_callback: Option<String>,
}

/// The client for a channel.
pub fn client_for(
    channel: &Channel,
    credentials: &Credentials,
    config: ClientConfig,
) -> Result<Box<dyn Provider>> {
    let secret = |name: &str| {
        credentials.get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::Conflict,
                format!("the channel has no {name} stored"),
            )
        })
    };
    let base = channel.graph_api_base_url.trim_end_matches('/').to_string();
    let media_hosts = config.http.media_hosts;
    let http = config.http.client;
    Ok(match channel.provider.as_str() {
        "meta" => Box::new(meta::MetaClient::cloud_api(
            http,
            &base,
            &channel.graph_api_version,
            channel.phone_number_id.as_deref().unwrap_or_default(),
            channel.waba_id.as_deref(),
            secret("access_token")?,
        )),
        "360dialog" => Box::new(meta::MetaClient::dialog360(http, &base, secret("api_key")?)),
        "twilio" => Box::new(twilio::TwilioClient {
            http,
            media_hosts,
            base,
            account_sid: secret("account_sid")?,
            auth_token: secret("auth_token")?,
            from: channel.display_number.clone().unwrap_or_default(),
            status_callback: config.status_callback,
        }),
        "gupshup" => Box::new(gupshup::GupshupClient {
            http,
            media_hosts,
            base,
            api_key: secret("api_key")?,
            source: channel
                .display_number
                .clone()
                .unwrap_or_default()
                .trim_start_matches('+')
                .to_string(),
            app_name: channel.provider_account.clone().unwrap_or_default(),
        }),
        "bird" => Box::new(bird::BirdClient {
            http,
            media_hosts,
            base,
            api_key: secret("api_key")?,
            account: channel.provider_account.clone().unwrap_or_default(),
        }),
        other => {
            return Err(Error::validation(format!("unknown provider {other}")));
        }
    })
}

/// Turns a transport error into an attempt: only a request that never connected is known
/// not to have been sent.
fn transport(err: &SendError) -> Attempt {
    match err {
        SendError::Refused(refused) => Attempt::Refused(refused.to_string()),
        _ if err.never_connected() => Attempt::NotSent(err.to_string()),
        _ => Attempt::Ambiguous(err.to_string()),
    }
}

/// Reads an answer: success via `accepted`, else a failure with the provider's `code`
/// found by `code_of`. A gateway error (502, 504) is ambiguous: the provider behind it may
/// have taken the message.
async fn read_answer(
    response: std::result::Result<reqwest::Response, SendError>,
    accepted: impl Fn(&Value) -> Option<String>,
    code_of: impl Fn(&Value) -> (Option<i64>, Option<String>),
) -> Attempt {
    let response = match response {
        Ok(r) => r,
        Err(err) => return transport(&err),
    };
    let status = response.status().as_u16();
    let body: Value = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(err) => return Attempt::Ambiguous(format!("reading the answer: {err}")),
    };
    if (200..300).contains(&status) {
        return match accepted(&body) {
            Some(id) => Attempt::Accepted(id),
            None => Attempt::Ambiguous(format!("a {status} answer without a message id")),
        };
    }
    let (code, message) = code_of(&body);
    if matches!(status, 502 | 504) && code.is_none() {
        return Attempt::Ambiguous(format!("gateway error {status}"));
    }
    Attempt::Rejected(ProviderFailure {
        http_status: status,
        code,
        message: message.unwrap_or_else(|| format!("HTTP {status}")),
    })
}

/// For a check whose "no" must not be confused with "could not ask": unreachable and 5xx are
/// `unavailable`, any other failure as `management_answer` reports it.
async fn checked_answer(
    provider: &str,
    response: std::result::Result<reqwest::Response, SendError>,
) -> Result<Value> {
    let response = response.map_err(|e| match e {
        SendError::Http(err) => Error::with_source(
            ErrorCode::Unavailable,
            format!("{provider} could not be reached"),
            err,
        ),
        refused => refused.into_error(provider),
    })?;
    if response.status().is_server_error() {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!("{provider} answered {}", response.status()),
        ));
    }
    management_answer(provider, Ok(response)).await
}

/// For management calls (templates, media): the JSON answer or an `upstream_error`.
async fn management_answer(
    provider: &str,
    response: std::result::Result<reqwest::Response, SendError>,
) -> Result<Value> {
    let response = response.map_err(|e| e.into_error(provider))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let detail = body
        .pointer("/error/message")
        .or_else(|| body.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no details");
    Err(Error::new(
        ErrorCode::UpstreamError,
        format!("{provider} answered {status}: {detail}"),
    ))
}
