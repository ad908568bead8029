//! Courier's durable storage.
//!
//! - [`types`]: entries, stream and consumer settings, consumer positions, recovery sessions.
//! - [`Store`]: the front every caller uses. One writer task turns waiting requests into one
//!   batch, commits it in one transaction (group commit) and takes its numbers (sequences,
//!   dedupe ids, consumers) into memory for the next batch; a finisher makes it durable (one
//!   fsync for every batch committed meanwhile, overlapping the next commit), then shows its
//!   entries (a tail of recent entries, the watch that wakes consumers) and answers.
//! - [`stats`]: lock-free counters and histograms (the writer's commit and sync times).
//! - [`Backend`]: what a persistence engine does with a batch; [`MemoryBackend`] for tests and
//!   ephemeral hubs, [`SqliteBackend`] (WAL, fsync per group or per interval) by default.
//!
//! The store never sees sockets: the server's delivery engine reads entries and records
//! consumer positions through it.
#![warn(missing_docs)]

pub mod backend;
pub mod memory;
pub mod sqlite;
pub mod stats;
mod store;
pub mod types;

pub use backend::Backend;
pub use memory::MemoryBackend;
pub use sqlite::{SqliteBackend, SyncPolicy};
pub use store::{MemoryUse, PublishCallback, SendLater, Store, StoreOptions};
pub use types::*;
