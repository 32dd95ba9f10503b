//! # dirk-dtable
//!
//! Distributed tables and the planner. A [`Session`] holds a catalog of [`DTable`]s whose
//! partitions are chunks on the engine's workers. SQL and DataFrame calls become DataFusion
//! logical plans; DataFusion optimizes them and builds a physical plan; [`stages::cut`] cuts that
//! plan at its exchanges into stages, and every stage runs one `dirk.fragment` task per partition
//! through the engine's scheduler, its fragment serialized with datafusion-proto.

mod broadcast;
mod builder;
mod catalog;
mod core;
pub mod dataframe;
mod dml;
pub mod error;
pub mod exec;
mod executor;
mod export;
#[cfg(test)]
mod fuzz;
mod ingest;
mod kernels;
mod layout;
pub mod prelude;
mod proto;
mod prune;
mod router;
pub mod session;
pub mod stages;
mod steps;
mod storage_meter;
mod stores;
pub mod stream;
pub mod table;
pub mod tpch;
mod wire;
mod worker_memory;

pub use builder::{SessionBuilder, Workers};
pub use dataframe::{DataFrame, GroupBy};
pub use datafusion;
/// Remote workers: options for reaching them, and the worker process's server.
pub use dirk_flight as flight;
pub use error::{DirkError, Result};
pub use kernels::register_kernels;
pub use session::{Session, TableStorage};
pub use stream::RecordBatchStream;
pub use table::DTable;

/// Sets failpoints from `NAME=ACTIONS;NAME=ACTIONS` (the `fail` crate's action syntax), in this
/// process: the steps of a statement's commit can be failed on purpose, to test that a failed
/// statement leaves its table as it was.
pub fn set_failpoints(spec: &str) -> std::result::Result<(), String> {
    for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("`{entry}` is not NAME=ACTIONS"))?;
        fail::cfg(name.trim(), actions.trim())?;
    }
    Ok(())
}
