use std::{fmt, panic::Location};

use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stable, machine-readable error codes. API clients and scripts match on these strings,
/// so a code is never renamed or reused once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be parsed (bad JSON, bad query string, bad header).
    InvalidRequest,
    /// The request parsed but a field failed validation.
    ValidationFailed,
    /// Missing, malformed, expired or revoked credentials.
    Unauthorized,
    /// Authenticated, but the role does not allow this.
    Forbidden,
    /// The object does not exist in the caller's tenant.
    NotFound,
    /// The route exists but not with this HTTP method.
    MethodNotAllowed,
    /// The request conflicts with existing state (duplicate name, already revoked, ...).
    Conflict,
    /// The body is larger than the route accepts.
    PayloadTooLarge,
    /// Too many requests; retry later.
    RateLimited,
    /// A dependency (usually the database) is unreachable or not ready.
    Unavailable,
    /// A provider (Meta, a BSP) answered with an error or not at all.
    UpstreamError,
    /// Configuration is invalid; only raised at start-up or by the CLI.
    InvalidConfig,
    /// A free-form message outside the contact's 24-hour customer-service window.
    WindowClosed,
    /// A marketing message to a contact who opted out of marketing.
    ContactOptedOut,
    /// The template does not exist, is not approved, or its parameters do not match.
    TemplateInvalid,
    /// An `Idempotency-Key` reused with a different request.
    IdempotencyKeyReused,
    /// The egress policy refuses the destination (a private, loopback or otherwise internal
    /// address, or a host the provider does not serve media from).
    EgressRefused,
    /// Anything unexpected. Details are logged, never returned.
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidRequest,
        Self::ValidationFailed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::Unavailable,
        Self::UpstreamError,
        Self::InvalidConfig,
        Self::WindowClosed,
        Self::ContactOptedOut,
        Self::TemplateInvalid,
        Self::IdempotencyKeyReused,
        Self::EgressRefused,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::ValidationFailed => "validation_failed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::UpstreamError => "upstream_error",
            Self::InvalidConfig => "invalid_config",
            Self::WindowClosed => "window_closed",
            Self::ContactOptedOut => "contact_opted_out",
            Self::TemplateInvalid => "template_invalid",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::EgressRefused => "egress_refused",
            Self::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::InvalidConfig => 400,
            Self::ValidationFailed
            | Self::WindowClosed
            | Self::ContactOptedOut
            | Self::TemplateInvalid
            | Self::IdempotencyKeyReused
            | Self::EgressRefused => 422,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::UpstreamError => 502,
            Self::Internal => 500,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is malformed",
            Self::ValidationFailed => "A field is invalid",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Not allowed for this role",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflicts with the current state",
            Self::PayloadTooLarge => "Request body too large",
            Self::RateLimited => "Too many requests",
            Self::Unavailable => "Service unavailable",
            Self::UpstreamError => "The provider failed",
            Self::InvalidConfig => "Invalid configuration",
            Self::WindowClosed => "The 24-hour customer-service window is closed",
            Self::ContactOptedOut => "The contact opted out of marketing",
            Self::TemplateInvalid => "The template cannot be sent like this",
            Self::IdempotencyKeyReused => "Idempotency key reused with a different request",
            Self::EgressRefused => "The destination is not allowed by the egress policy",
            Self::Internal => "Internal error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error type of Waypost. `message` is safe to show to the caller; `source` and
/// `location` are for logs only (an internal error's message is never sent to clients).
pub struct Error {
    code: ErrorCode,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    location: &'static Location<'static>,
}

impl Error {
    #[track_caller]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
            location: Location::caller(),
        }
    }

    /// An unexpected failure; `context` says what was being done, `source` why it failed.
    #[track_caller]
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: context.into(),
            source: Some(source.into()),
            location: Location::caller(),
        }
    }

    #[track_caller]
    pub fn with_source(
        code: ErrorCode,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            source: Some(source.into()),
            location: Location::caller(),
        }
    }

    #[track_caller]
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    #[track_caller]
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// What may be shown to an API caller: internal details stay in the logs.
    pub fn public_message(&self) -> &str {
        match self.code {
            ErrorCode::Internal => "an unexpected error occurred; it has been logged",
            _ => &self.message,
        }
    }
}

impl fmt::Display for Error {
    /// One line: the message, then the cause chain. Used by the CLI and by logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        let mut cause = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} (at {})", self.code, self, self.location)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }

    #[test]
    fn internal_errors_hide_details_from_callers() {
        let err = Error::internal("loading tenant", std::io::Error::other("disk on fire"));
        assert_eq!(err.code().http_status(), 500);
        assert!(!err.public_message().contains("disk"));
        assert_eq!(err.to_string(), "loading tenant: disk on fire");
    }
}
