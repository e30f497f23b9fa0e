//! The storage contract: every story runs on SQLite and, when configured, on PostgreSQL.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod contract;
mod isolation;
mod queue;
