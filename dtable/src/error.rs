//! The dtable layer's error type.

use datafusion::error::DataFusionError;
use dirk_engine::{EngineError, ErrorKind, TaskId, WorkerId};
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
    /// A statement that needs a resident table, run on an external one.
    #[error(
        "table `{name}` is an external table: its rows stay in its files, which queries read \
         and INSERT adds to; CREATE TABLE <name> AS SELECT * FROM {name} makes a resident copy"
    )]
    ExternalTable {
        /// The table.
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
    /// A result larger than `collect()` may bring into the caller's memory.
    #[error(
        "the result passed {limit} bytes, more than collect() brings into memory \
         (SessionBuilder::result_limit); stream it with execute_stream(), or write it with COPY \
         or write_parquet"
    )]
    ResultTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Code under Dirk (the planner) panicked on a statement; the session goes on.
    #[error("internal error while {during}: {message}")]
    Panicked {
        /// What was being done.
        during: String,
        /// The panic's message.
        message: String,
    },
    /// A statement's in-place write failed, and so did undoing the writes that had landed.
    #[error(
        "the statement failed ({failure}) and undoing its writes failed too ({undo}): the table \
         may hold part of its changes"
    )]
    UndoFailed {
        /// Why the statement failed.
        failure: String,
        /// Why an undo failed.
        undo: String,
    },
}

/// Runs `work`, turning a panic inside it (DataFusion's planner panics on some malformed
/// statements) into [`DirkError::Panicked`], so one statement cannot take the session down.
pub(crate) async fn unless_panicked<T>(
    during: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    dirk_engine::panics::catch_async(work)
        .await
        .unwrap_or_else(|panic| {
            Err(DirkError::Panicked {
                during: during.to_string(),
                message: panic.to_string(),
            })
        })
}

impl DirkError {
    /// Whose failure this is: the user's, retryable, or a bug in Dirk (see [`ErrorKind`]).
    /// It is the kind the failing kernel gave, carried from the worker that ran it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DirkError::DataFusion(e) => datafusion_kind(e),
            DirkError::Engine(e) => e.kind(),
            DirkError::TableChanged { .. } => ErrorKind::Retryable,
            DirkError::Panicked { .. } | DirkError::UndoFailed { .. } => ErrorKind::Internal,
            DirkError::TableNotFound { .. }
            | DirkError::ExternalTable { .. }
            | DirkError::TableExists { .. }
            | DirkError::Unsupported { .. }
            | DirkError::ResultTooLarge { .. }
            | DirkError::SchemaMismatch { .. } => ErrorKind::User,
        }
    }

    /// The task that failed, when a task did.
    pub fn task(&self) -> Option<TaskId> {
        self.engine_error().and_then(EngineError::task)
    }

    /// The worker the failure came from, when one is known.
    pub fn worker(&self) -> Option<WorkerId> {
        self.engine_error().and_then(EngineError::worker)
    }

    fn engine_error(&self) -> Option<&EngineError> {
        match self {
            DirkError::Engine(e) => Some(e),
            DirkError::DataFusion(DataFusionError::External(inner)) => {
                inner.downcast_ref::<EngineError>().or_else(|| {
                    inner
                        .downcast_ref::<DirkError>()
                        .and_then(DirkError::engine_error)
                })
            }
            _ => None,
        }
    }
}

/// Whose failure a DataFusion error is. Storage and memory failures may pass; a bug report
/// from DataFusion (`Internal`) is a bug; the rest (plans, types, casts, parse errors, values
/// out of range, files that are not what they claim) is the user's.
pub fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    use datafusion::object_store::Error as StoreError;
    match e {
        DataFusionError::ResourcesExhausted(_) | DataFusionError::IoError(_) => {
            ErrorKind::Retryable
        }
        DataFusionError::ObjectStore(e) => match e.as_ref() {
            StoreError::NotFound { .. }
            | StoreError::InvalidPath { .. }
            | StoreError::PermissionDenied { .. }
            | StoreError::Unauthenticated { .. }
            | StoreError::NotSupported { .. }
            | StoreError::NotImplemented { .. }
            | StoreError::UnknownConfigurationKey { .. } => ErrorKind::User,
            _ => ErrorKind::Retryable,
        },
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            arrow::error::ArrowError::IoError(..) => ErrorKind::Retryable,
            arrow::error::ArrowError::ExternalError(inner) => external_kind(inner.as_ref()),
            _ => ErrorKind::User,
        },
        DataFusionError::Internal(_) | DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
        DataFusionError::External(inner) => external_kind(inner.as_ref()),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_kind(inner)
        }
        DataFusionError::Shared(inner) => datafusion_kind(inner),
        DataFusionError::Collection(all) => all.first().map_or(ErrorKind::User, datafusion_kind),
        _ => ErrorKind::User,
    }
}

fn external_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(e) = e.downcast_ref::<EngineError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<DirkError>() {
        e.kind()
    } else if let Some(e) = e.downcast_ref::<DataFusionError>() {
        datafusion_kind(e)
    } else if e.is::<std::io::Error>() {
        ErrorKind::Retryable
    } else {
        ErrorKind::User
    }
}

/// A DataFusion error met inside a kernel, as the engine error the kernel returns: its kind
/// and one-line message go to the driver.
pub(crate) fn kernel_error(e: DataFusionError) -> EngineError {
    EngineError::failed(datafusion_kind(&e), e.to_string())
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
