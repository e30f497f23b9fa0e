use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, ErrorCode};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) id: index-friendly and needs no sequence.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s.trim()).map(Self).map_err(|_| {
                    Error::new(ErrorCode::InvalidRequest, concat!("not a valid ", $what, " id"))
                })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

uuid_id!(
    /// A business using this Waypost server. Every piece of customer data belongs to one.
    TenantId,
    "tenant"
);
uuid_id!(
    /// An API key's public identity (never its secret).
    ApiKeyId,
    "API key"
);
uuid_id!(
    /// A person who signs in (a tenant member or a platform operator).
    UserId,
    "user"
);
uuid_id!(
    /// An encrypted secret stored for a tenant.
    SecretId,
    "secret"
);
uuid_id!(
    /// A WhatsApp number connected to a tenant.
    ChannelId,
    "channel"
);
uuid_id!(
    /// A person a tenant talks to on WhatsApp.
    ContactId,
    "contact"
);
uuid_id!(
    /// The thread between one contact and one channel.
    ConversationId,
    "conversation"
);
uuid_id!(
    /// A message, inbound or outbound.
    MessageId,
    "message"
);
uuid_id!(
    /// A raw webhook body in the inbox.
    InboxId,
    "inbox entry"
);
uuid_id!(
    /// A message template of a channel (a local copy of the provider's).
    TemplateId,
    "template"
);
uuid_id!(
    /// A job in the durable queue.
    JobId,
    "job"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = TenantId::new();
        assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
        let err = "not-a-uuid".parse::<TenantId>().unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.message(), "not a valid tenant id");
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
    }
}
