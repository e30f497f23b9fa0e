//! The storage contract: every story runs on SQLite and, when configured, on PostgreSQL.

mod contract;
mod isolation;
mod queue;
