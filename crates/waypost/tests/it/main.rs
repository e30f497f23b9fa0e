//! The `waypost` binary as an operator uses it: real processes, real ports, real signals,
//! on SQLite and PostgreSQL.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod egress;
mod identity;
mod inbound;
mod outbound;
mod platform;
mod privacy;
mod process;
mod security;
mod serve;
