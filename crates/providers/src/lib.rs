//! Wire formats of the WhatsApp Cloud API and the BSPs, and the one event model Waypost
//! normalizes them into. Pure functions: no I/O, no database. Every parser keeps what it does
//! not understand (the raw object travels with each event) and never panics on input.

pub mod bird;
pub mod event;
pub mod gupshup;
pub mod meta;
pub mod signature;
pub mod twilio;

pub use event::*;
