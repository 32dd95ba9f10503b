//! The dtable layer's error type.

use datafusion::error::DataFusionError;
use dirk_engine::EngineError;
use thiserror::Error;

/// Result alias for this crate.
pub type Result<T, E = DirkError> = std::result::Result<T, E>;

/// What can go wrong planning or running a query.
#[derive(Debug, Error)]
pub enum DirkError {
    /// DataFusion rejected the SQL or the plan (syntax, unknown table or column, types).
    #[error("{}", one_line(.0))]
    DataFusion(#[from] DataFusionError),
    /// The engine failed a task.
    #[error("{}", one_line(.0))]
    Engine(#[from] EngineError),
    /// A table name that the catalog does not hold.
    #[error("table `{name}` not found")]
    TableNotFound {
        /// The name asked for.
        name: String,
    },
    /// A table name that is already taken.
    #[error("table `{name}` already exists")]
    TableExists {
        /// The name.
        name: String,
    },
    /// A statement Dirk does not run (yet).
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// A table re-laid out between planning a query and running it.
    #[error("table `{name}` changed while the query was planned; run the query again")]
    TableChanged {
        /// The table.
        name: String,
    },
    /// Batches that do not match a table's schema.
    #[error("schema mismatch: {detail}")]
    SchemaMismatch {
        /// What differs.
        detail: String,
    },
}

impl From<DirkError> for DataFusionError {
    fn from(e: DirkError) -> Self {
        match e {
            DirkError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<arrow::error::ArrowError> for DirkError {
    fn from(e: arrow::error::ArrowError) -> Self {
        DirkError::DataFusion(DataFusionError::from(e))
    }
}

/// Errors are shown on one line: DataFusion's multi-line hints are joined.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
