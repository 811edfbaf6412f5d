//! Typed failures. Every variant says what failed and where; `exit_code` maps
//! them onto the CLI contract (0 ok, 1 anything else, 2 usage, 3 bad input).

use std::fmt;

use serde::Serialize;

/// Where in a source a bad input was found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Location {
    /// 1-based line (text formats) or row (columnar formats), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, &self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column '{}'", c.escape_debug()),
            (Some(l), None) => write!(f, "line {l}"),
            (None, Some(c)) => write!(f, "column '{}'", c.escape_debug()),
            (None, None) => write!(f, "start of file"),
        }
    }
}

/// A source that cannot be ingested as it is.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("bad input in {source_uri} at {location}: {reason}")]
pub struct BadInput {
    pub source_uri: String,
    pub location: Location,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadInput(#[from] BadInput),

    #[error("usage: {0}")]
    Usage(String),

    #[error("object store error at {path}: {source}")]
    Store { path: String, source: object_store::Error },

    #[error("Lance error on table '{table}': {source}")]
    Lance { table: String, source: lance::Error },

    #[error("corrupt {what} at {path}: {reason}")]
    Corrupt { what: &'static str, path: String, reason: String },

    #[error("deadline passed before {step}: the operation stopped without starting it; retry with a longer --timeout")]
    Deadline { step: &'static str },

    #[error("{0}")]
    Blocked(String),

    #[error("gave up after {attempts} attempts at {what}: {last}")]
    Contention { what: &'static str, attempts: u32, last: String },

    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },

    #[error("injected failure at failpoint {0}")]
    Injected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code the CLI contract assigns to this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) => 3,
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// True only when the failure proves no Lance commit of the operation landed
    /// (an ambiguous failure, such as a timeout, may hide a landed commit).
    pub fn surely_uncommitted(&self) -> bool {
        match self {
            Error::Deadline { .. } | Error::BadInput(_) | Error::Usage(_) => true,
            Error::Lance { source, .. } => matches!(
                source,
                lance::Error::IncompatibleTransaction { .. }
                    | lance::Error::RetryableCommitConflict { .. }
                    | lance::Error::CommitConflict { .. }
                    | lance::Error::TooMuchWriteContention { .. }
            ),
            _ => false,
        }
    }

    pub fn store(path: impl ToString, source: object_store::Error) -> Self {
        Error::Store { path: path.to_string(), source }
    }

    pub fn lance(table: impl ToString, source: lance::Error) -> Self {
        Error::Lance { table: table.to_string(), source }
    }

    pub fn io(path: impl ToString, source: std::io::Error) -> Self {
        Error::Io { path: path.to_string(), source }
    }
}
