//! The only crate that talks to the database. Every query is written once with `$N`
//! parameters and runs on SQLite or PostgreSQL; the few dialect-only statements sit side by
//! side with their twin. Tenant data is reachable only through [`Tx<Tenant>`], which binds the
//! tenant into every query and, on PostgreSQL, into the transaction for row-level security.

mod api_keys;
mod audit;
mod audit_keys;
mod batch;
mod connect;
mod contacts;
mod erasure;
mod inbound;
mod jobs;
mod outbound;
mod private_files;
mod probes;
mod schedules;
mod secrets;
mod settings;
mod templates;
mod tenants;
mod tx;
mod users;

pub use api_keys::{ApiKey, ApiKeyWithSecret, NewApiKey};
pub use audit::{AuditEvent, AuditFilter, AuditRecord, ChainReport, broken_chain_error};
pub use audit_keys::{AuditKeys, MacKey};
pub use connect::{DatabaseUrl, Engine, Identity, Readiness, SqliteSync, Store, StoreOptions};
pub use contacts::{ConsentEvent, ConsentSettings, Contact, ContactKey, MARKETING};
pub use inbound::{
    Channel, ChannelRoute, ContactIdentity, Conversation, InboxEntry, IncomingWebhook, NewChannel,
    NewInboundMessage, SERVICE_WINDOW_MS, StatusChange, StatusOutcome, StoredMessage, Verification,
};
pub use jobs::{ClaimedJob, Enqueued, JobKinds, JobRecord, JobState, KindStats, NewJob};
pub use outbound::{
    IDEMPOTENCY_WINDOW_MS, LANE_BULK, LANE_TRANSACTIONAL, NewOutboundMessage, OutboxItem,
    SendOutcome,
};
pub use private_files::{private_dir, private_file};
pub use probes::{PROBE_JOB_KIND, ProbeStatus};
pub use secrets::{SecretStatus, StoredKey, StoredSecret};
pub use settings::{AiSettingsRecord, TenantSettings};
pub use templates::{Template, TemplateChange, TemplateUpsert};
pub use tenants::Tenant;
pub use tx::{Platform, Scope, Tenant as TenantScope, Tx};
pub use users::{
    FailureWindow, Membership, NewSession, SessionRecord, User, UserWithPassword, normalize_email,
};

/// The PostgreSQL role the application works as; see migrations/postgres/0001_foundation.sql.
pub const APP_ROLE: &str = "waypost_app";

#[cfg(feature = "testkit")]
pub mod testkit;
