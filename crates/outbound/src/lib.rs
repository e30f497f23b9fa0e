//! The send side of Waypost: what can be sent ([`message`]), the checks before a message is
//! queued ([`send`]), templates ([`template`]), one client per provider behind one trait
//! ([`provider`]) and the paced, exactly-once dispatcher ([`dispatcher`]).

pub mod dispatcher;
pub mod jobs;
pub mod message;
pub mod provider;
pub mod send;
pub mod template;

pub use dispatcher::{Dispatcher, DispatcherConfig, Waker};
pub use message::OutboundContent;
pub use provider::{Attempt, ClientConfig, Provider, ProviderFailure, Reaction, client_for, react};
pub use send::{OutboxPayload, QueueRequest, Recipient, queue};
