//! Waypost's domain vocabulary: identifiers, roles, instants, the one error type with its
//! stable codes, and the opaque pagination cursor. No I/O lives here.

mod error;
mod ids;
mod page;
mod phone;
mod role;
mod time;

pub use error::{Error, ErrorCode, Result};
pub use ids::{
    ApiKeyId, ChannelId, ContactId, ConversationId, InboxId, JobId, MessageId, SecretId,
    TemplateId, TenantId, UserId,
};
pub use page::{Cursor, Page, PageRequest};
pub use phone::PhoneNumber;
pub use role::Role;
pub use time::Timestamp;
