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
    /// A column the table lacks (a table that adds columns takes it instead).
    #[serde(skip)]
    pub new_column: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadInput(#[from] BadInput),

    #[error("usage: {0}")]
    Usage(String),

    #[error("object store error at {path}: {}", one_line(source))]
    Store { path: String, source: object_store::Error },

    #[error("Lance error on table '{table}': {source}")]
    Lance { table: String, source: lance::Error },

    #[error("corrupt {what} at {path}: {reason}")]
    Corrupt { what: &'static str, path: String, reason: String },

    #[error("deadline passed before {step}: the operation stopped without starting it; retry with a longer --timeout")]
    Deadline { step: &'static str },

    #[error("{0}")]
    Blocked(String),

    /// A local file changed while it was ingested: what was read may not be
    /// the version its identity names.
    #[error(
        "{path} changed while it was being ingested ({what}): nothing of it was published. A file still being written is \
         not ingested: deliver it again once it is complete"
    )]
    Changed { path: String, what: String },

    /// A CSV file's parts were not cut between records (a quoted field
    /// holds a line break there, or a part holds a record over the bound):
    /// staging reads the file whole instead, never reporting this.
    #[error("{path}: the part ending at byte {at} does not end between CSV records, or holds one too long (a quoted field with line breaks?): the file is read whole instead")]
    MisCut { path: String, at: u64 },

    #[error("gave up after {attempts} attempts at {what}: {last}")]
    Contention { what: &'static str, attempts: u32, last: String },

    #[error("i/o error on {path}: {}", io_hint(source))]
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

/// Longest store detail an error message repeats.
const MAX_DETAIL: usize = 240;

/// A store failure in one line: what happened, the store's own words
/// (S3's XML reduced to its code and message), and what to do.
fn one_line(e: &object_store::Error) -> String {
    let text = e.to_string();
    let code = between(&text, "<Code>", "</Code>");
    let detail = match (code, between(&text, "<Message>", "</Message>")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        _ => {
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let flat = flat.split(" <?xml").next().unwrap_or(&flat).trim_end_matches([':', ' ']).to_string();
            if flat.chars().count() > MAX_DETAIL { format!("{}...", flat.chars().take(MAX_DETAIL).collect::<String>()) } else { flat }
        }
    };
    let lower = text.to_ascii_lowercase();
    let (what, todo) = match e {
        _ if code == Some("NoSuchBucket") => ("no such bucket", "check the bucket name in the root or source URL"),
        object_store::Error::NotFound { .. } => ("not found", "check the path, or whether the object was deleted"),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            ("access denied", "check the credentials (AWS_* variables or the role) and the bucket policy")
        }
        _ if code.is_some_and(|c| c.contains("AccessDenied") || c.contains("InvalidAccessKeyId") || c.contains("SignatureDoesNotMatch")) => {
            ("access denied", "check the credentials (AWS_* variables or the role) and the bucket policy")
        }
        _ if lower.contains("permission denied") => ("permission denied", "check the file system permissions of the path"),
        _ if lower.contains("no such file or directory") => ("no such file or directory", "check that the path's folders exist"),
        _ if lower.contains("connect") || lower.contains("dns") || lower.contains("timed out") => {
            ("cannot reach the store", "check the endpoint (AWS_ENDPOINT_URL), the region and the network; then retry")
        }
        _ => ("the request failed", "retry; if it persists, check the store's health and the settings above"),
    };
    format!("{what} ({detail}); {todo}")
}

/// A local i/o failure with what to do about it, where there is something to do.
fn io_hint(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("{e}; check the path (nothing was read or written)"),
        std::io::ErrorKind::PermissionDenied => format!("{e}; check the file system permissions of the path"),
        _ => e.to_string(),
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let rest = &text[text.find(open)? + open.len()..];
    Some(&rest[..rest.find(close)?])
}
