//! The egress policy: every HTTP request whose destination a tenant or a webhook body can
//! influence (a channel's API base URL, media URLs from webhooks, the AI base URL, customer
//! webhook endpoints, ad-platform pushes) goes through an [`EgressClient`].
//!
//! - Literal addresses in the URL are checked before anything connects; host names are
//!   checked on every address they resolve to, by the resolver the connector uses, so what is
//!   checked is what is connected to (DNS rebinding has no window).
//! - Redirects are followed at most [`MAX_REDIRECTS`] times, each hop checked the same way;
//!   credentials are not carried to another host.
//! - Refused: loopback, unspecified, private, carrier-grade NAT, link-local (cloud metadata),
//!   multicast, broadcast, documentation, benchmarking and the IPv6 equivalents, including
//!   IPv4-mapped and -compatible forms. Operators may allow networks, `address:port` pairs
//!   and host names (`[egress] allow`).
//!
//! The client offers no way to send without these checks: [`EgressRequest`] wraps reqwest's
//! builder and its `send` checks the final URL.

mod policy;
mod resolve;

use std::{sync::Arc, time::Duration};

use reqwest::{Method, Response};
use serde::Serialize;
use waypost_core::{Error, ErrorCode};

pub use policy::{EgressPolicy, Refused, internal_reason};
pub use resolve::{Lookup, SystemLookup};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;

/// Timeouts and pooling of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// The whole request, answer included; `None` leaves it to each request.
    pub timeout: Option<Duration>,
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            pool_max_idle_per_host: 512,
        }
    }
}

/// An HTTP client that only reaches destinations the policy allows. Cheap to clone.
#[derive(Clone)]
pub struct EgressClient {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
    http: reqwest::Client,
}

#[derive(Debug)]
struct TooManyRedirects;

impl std::fmt::Display for TooManyRedirects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {MAX_REDIRECTS} redirects")
    }
}

impl std::error::Error for TooManyRedirects {}

impl EgressClient {
    /// A client with default options and the system resolver.
    pub fn new(policy: EgressPolicy) -> Result<Self, Error> {
        Self::build(policy, ClientOptions::default(), Arc::new(SystemLookup))
    }

    pub fn build(
        policy: EgressPolicy,
        options: ClientOptions,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, Error> {
        let policy = Arc::new(policy);
        let hops = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(TooManyRedirects);
            }
            match hops.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let mut builder = reqwest::Client::builder()
            // A proxy would resolve names itself, out of the policy's sight.
            .no_proxy()
            .redirect(redirects)
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .dns_resolver(Arc::new(resolve::PolicyResolver {
                policy: policy.clone(),
                lookup: lookup.clone(),
            }));
        if let Some(timeout) = options.timeout {
            builder = builder.timeout(timeout);
        }
        let http = builder
            .build()
            .map_err(|e| Error::internal("building the egress HTTP client", e))?;
        Ok(Self {
            policy,
            lookup,
            http,
        })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    pub fn request(&self, method: Method, url: impl AsRef<str>) -> EgressRequest {
        EgressRequest {
            builder: self.http.request(method, url.as_ref()),
            policy: self.policy.clone(),
        }
    }

    pub fn get(&self, url: impl AsRef<str>) -> EgressRequest {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl AsRef<str>) -> EgressRequest {
        self.request(Method::POST, url)
    }

    pub fn delete(&self, url: impl AsRef<str>) -> EgressRequest {
        self.request(Method::DELETE, url)
    }

    /// Checks a URL now, resolving its host: for refusing a setting when it is saved rather
    /// than when it is first used. A name that does not resolve (yet) passes: requests are
    /// checked again when they connect.
    pub async fn check(&self, url: &str) -> Result<(), Error> {
        let parsed = url::Url::parse(url)
            .map_err(|_| Error::validation("the URL is not an absolute URL"))?;
        self.policy.check_url(&parsed)?;
        if let Some(url::Host::Domain(name)) = parsed.host() {
            let found =
                resolve::PolicyResolver::allowed_addrs(&self.policy, self.lookup.as_ref(), name)
                    .await;
            if let Some(refused) = found.err().and_then(|e| refusal_in(e.as_ref())) {
                return Err(refused.into());
            }
        }
        Ok(())
    }
}

/// A request being built; only [`EgressRequest::send`] sends it, after the policy's check.
pub struct EgressRequest {
    builder: reqwest::RequestBuilder,
    policy: Arc<EgressPolicy>,
}

impl EgressRequest {
    fn map(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        Self {
            builder: f(self.builder),
            policy: self.policy,
        }
    }

    pub fn header(self, name: &str, value: impl AsRef<str>) -> Self {
        self.map(|b| b.header(name, value.as_ref()))
    }

    pub fn bearer_auth(self, token: &str) -> Self {
        self.map(|b| b.bearer_auth(token))
    }

    pub fn basic_auth(self, user: &str, password: Option<&str>) -> Self {
        self.map(|b| b.basic_auth(user, password))
    }

    pub fn json<T: Serialize + ?Sized>(self, body: &T) -> Self {
        self.map(|b| b.json(body))
    }

    pub fn form<T: Serialize + ?Sized>(self, form: &T) -> Self {
        self.map(|b| b.form(form))
    }

    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|b| b.query(query))
    }

    pub fn multipart(self, form: reqwest::multipart::Form) -> Self {
        self.map(|b| b.multipart(form))
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    /// Checks the destination, then sends.
    pub async fn send(self) -> Result<Response, SendError> {
        let (client, request) = self.builder.build_split();
        let request = request.map_err(SendError::Http)?;
        self.policy
            .check_url(request.url())
            .map_err(SendError::Refused)?;
        client
            .execute(request)
            .await
            .map_err(|err| match refusal_in(&err) {
                Some(refused) => SendError::Refused(refused),
                None => SendError::Http(err),
            })
    }
}

/// Why a request was not answered: the policy refused its destination (nothing connected),
/// or HTTP failed.
#[derive(Debug)]
pub enum SendError {
    Refused(Refused),
    Http(reqwest::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(refused) => refused.fmt(f),
            Self::Http(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Refused(refused) => Some(refused),
            Self::Http(err) => Some(err),
        }
    }
}

impl SendError {
    /// Known not to have reached the destination: refused, or never connected.
    pub fn never_connected(&self) -> bool {
        match self {
            Self::Refused(_) => true,
            Self::Http(err) => err.is_connect() || err.is_builder(),
        }
    }

    /// As the one error type: `egress_refused`, or `upstream_error` naming `what` failed.
    pub fn into_error(self, what: &str) -> Error {
        match self {
            Self::Refused(refused) => refused.into(),
            Self::Http(err) => Error::with_source(
                ErrorCode::UpstreamError,
                format!("{what} could not be reached"),
                err,
            ),
        }
    }
}

/// The policy's refusal somewhere in an error's chain of causes (reqwest wraps what the
/// resolver and the redirect policy return).
pub fn refusal_in(err: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        current = e.source();
    }
    None
}
