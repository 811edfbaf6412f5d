//! sluice: stateless workers that keep a lake of Lance tables on an object
//! store correct under concurrent writers, coordinating only through
//! conditional PUTs. See docs/PROTOCOL.md for the protocol.

pub mod adopt;
pub mod audit;
pub mod cleanup;
mod columns;
pub mod counting;
pub mod deadline;
pub mod delay;
pub mod dialect;
pub mod decode;
pub mod discover;
pub mod error;
mod exact;
pub mod failpoints;
pub mod faults;
pub mod fence;
pub mod hide_newer;
pub mod index;
mod inline_transactions;
pub mod ingest;
mod json_members;
mod parts;
pub mod known_manifest;
pub mod lake;
pub mod loads;
pub mod manifest;
pub mod optimize;
pub mod partitions;
pub mod read;
pub mod recover;
mod rescue;
pub mod sidecar;
pub mod settings;
mod single;
pub mod source;
mod stage;
mod times;
pub mod types;
mod upsert_undo;

pub use error::{Error, Result};
pub use lake::Lake;

/// Default operation budget: the longest a Lambda invocation can run.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
