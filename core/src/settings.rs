//! A table's settings kept in the lake, beside its pin in every manifest
//! version: the indices it declares and how its schema evolves. They change only through the door (an
//! operation whose publish carries the change), so every reader of a version
//! sees the settings that version was published with.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types;

/// The index kinds sluice builds and keeps fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    IvfPq,
    IvfHnswSq,
    IvfFlat,
    Btree,
    Bitmap,
    LabelList,
    Fts,
}

impl IndexKind {
    pub fn is_vector(self) -> bool {
        matches!(self, IndexKind::IvfPq | IndexKind::IvfHnswSq | IndexKind::IvfFlat)
    }

    pub fn name(self) -> &'static str {
        match self {
            IndexKind::IvfPq => "ivf_pq",
            IndexKind::IvfHnswSq => "ivf_hnsw_sq",
            IndexKind::IvfFlat => "ivf_flat",
            IndexKind::Btree => "btree",
            IndexKind::Bitmap => "bitmap",
            IndexKind::LabelList => "label_list",
            IndexKind::Fts => "fts",
        }
    }
}

impl FromStr for IndexKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<IndexKind> {
        const ALL: [IndexKind; 7] =
            [IndexKind::IvfPq, IndexKind::IvfHnswSq, IndexKind::IvfFlat, IndexKind::Btree, IndexKind::Bitmap, IndexKind::LabelList, IndexKind::Fts];
        ALL.into_iter().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| {
            Error::Usage(format!("unknown index type '{s}': use {}", ALL.map(IndexKind::name).join(", ")))
        })
    }
}

/// Distance of a vector index (and of a search that uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    L2,
    Cosine,
    Dot,
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Metric> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "cosine" => Ok(Metric::Cosine),
            "dot" => Ok(Metric::Dot),
            _ => Err(Error::Usage(format!("unknown metric '{s}': use l2, cosine or dot"))),
        }
    }
}

/// One declared index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    pub name: String,
    pub column: String,
    pub kind: IndexKind,
    /// Vector indices only (default l2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// IVF partitions; by default about the square root of the rows at the first build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// PQ sub-vectors; by default a sixteenth (or eighth) of the dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_vectors: Option<u32>,
}

impl IndexSpec {
    /// Can this index be built on a column of type `t` (of `table`)? The
    /// error says what the kind needs.
    pub fn check_column(&self, table: &str, schema: &arrow::datatypes::Schema) -> Result<()> {
        let field = schema.field_with_name(&self.column).map_err(|_| {
            Error::Usage(format!("table '{table}' has no column '{}' (columns: {})", self.column, types::describe(schema)))
        })?;
        let t = field.data_type();
        use arrow::datatypes::DataType;
        let needs = match self.kind {
            k if k.is_vector() && types::vector_dimensions(t).is_none() => {
                "a vector(N) column (declare it in the table's schema; a list<float64> from inference is not one)"
            }
            IndexKind::Fts if !matches!(t, DataType::Utf8 | DataType::LargeUtf8) => "a string column",
            IndexKind::LabelList if !matches!(t, DataType::List(_) | DataType::LargeList(_)) => "a list column",
            IndexKind::Btree | IndexKind::Bitmap if t.is_nested() => "a scalar column",
            _ => return self.check_params(),
        };
        Err(Error::Usage(format!("a {} index needs {needs}; column '{}' of table '{table}' is {}", self.kind.name(), self.column, types::name(t))))
    }

    fn check_params(&self) -> Result<()> {
        if !self.kind.is_vector() && (self.metric.is_some() || self.partitions.is_some() || self.sub_vectors.is_some()) {
            return Err(Error::Usage(format!("metric, partitions and sub-vectors are for vector indices, not {} (index '{}')", self.kind.name(), self.name)));
        }
        Ok(())
    }
}

/// An index as people declare it (`index create`, a load descriptor, the
/// Lambda's routes): `{"column": "emb", "type": "ivf_pq", "metric"?: "cosine",
/// "name"?: ..., "partitions"?: N, "sub_vectors"?: N}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDecl {
    pub column: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub metric: Option<String>,
    /// Default: `<column>_idx`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub partitions: Option<u32>,
    #[serde(default)]
    pub sub_vectors: Option<u32>,
}

impl IndexDecl {
    pub fn spec(self) -> Result<IndexSpec> {
        Ok(IndexSpec {
            name: self.name.unwrap_or_else(|| format!("{}_idx", self.column)),
            kind: self.kind.parse()?,
            metric: self.metric.map(|m| m.parse()).transpose()?,
            partitions: self.partitions,
            sub_vectors: self.sub_vectors,
            column: self.column,
        })
    }
}

/// What an ingest does with a source column the table lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evolution {
    /// Bad input: the source is quarantined.
    #[default]
    Strict,
    /// The column is added to the table (nullable, null for every earlier
    /// row) by an operation of its own, then the source is ingested.
    AddColumns,
    /// The schema stays; what does not fit it (a field the table lacks, a
    /// value its column cannot hold as written) goes into [`RESCUE_COLUMN`].
    Rescue,
}

/// A `rescue` table's column for what does not fit: one JSON object per row.
pub const RESCUE_COLUMN: &str = "_rescued_data";

impl Evolution {
    pub fn name(self) -> &'static str {
        match self {
            Evolution::Strict => "strict",
            Evolution::AddColumns => "add-columns",
            Evolution::Rescue => "rescue",
        }
    }

    pub fn is_strict(&self) -> bool {
        *self == Evolution::Strict
    }
}

impl FromStr for Evolution {
    type Err = Error;
    fn from_str(s: &str) -> Result<Evolution> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "strict" => Ok(Evolution::Strict),
            "add-columns" => Ok(Evolution::AddColumns),
            "rescue" => Ok(Evolution::Rescue),
            _ => Err(Error::Usage(format!("unknown schema evolution '{s}': use strict, add-columns or rescue"))),
        }
    }
}

/// A change of a table's settings, carried by the publish of the operation
/// that made it (and by that operation's intent, for recovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    AddIndex(IndexSpec),
    DropIndex(String),
    Evolution(Evolution),
}

impl Change {
    /// Make the change to a table's settings (idempotent).
    pub fn apply(&self, indices: &mut Vec<IndexSpec>, evolution: &mut Evolution) {
        match self {
            Change::AddIndex(spec) => {
                indices.retain(|i| i.name != spec.name);
                indices.push(spec.clone());
            }
            Change::DropIndex(name) => indices.retain(|i| &i.name != name),
            Change::Evolution(e) => *evolution = *e,
        }
    }

    /// Do the settings show the change made?
    pub fn holds(&self, indices: &[IndexSpec], evolution: Evolution) -> bool {
        match self {
            Change::AddIndex(spec) => indices.contains(spec),
            Change::DropIndex(name) => !indices.iter().any(|i| &i.name == name),
            Change::Evolution(e) => evolution == *e,
        }
    }
}
