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
mod group;
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
pub mod queue;
mod read_ahead;
pub mod read;
mod record_ends;
pub mod recover;
mod remembered_manifests;
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

/// The environment Lance reads once, set to sluice's defaults where the
/// caller set nothing:
/// - `LANCE_CPU_THREADS`: every core. Lance's encoding pool otherwise leaves
///   two cores for I/O, so on a 2-core machine (a small Lambda) it encodes on
///   one thread, and the parts of a large file (`parts.rs`) could not encode
///   their last pages side by side.
/// - `LANCE_INCLUDE_VECTOR_CENTROIDS`: false (index statistics without the
///   centroids: Lance's coming default, and its warning silenced).
///
/// # Safety
///
/// Call before any other thread starts: it sets environment variables.
pub unsafe fn set_lance_defaults() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    for (name, value) in [("LANCE_CPU_THREADS", cores.as_str()), ("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")] {
        if std::env::var_os(name).is_none() {
            // SAFETY: the caller's promise: no other thread exists yet.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

/// Default operation budget: the longest a Lambda invocation can run.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
