//! Files as tables: the file listing a `CREATE EXTERNAL TABLE` describes (an external table,
//! read by the tasks of each query), and files read into a resident DTable, each split (a byte
//! range, or row groups) by the task of the worker that then keeps it. Either way the data
//! never passes through the driver.

use crate::catalog::ExternalTable;
use crate::error::{DirkError, Result};
use crate::executor::Executor;
use crate::stores::StoreRegistry;
use crate::table::DTable;
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{CreateExternalTable, LogicalPlan};
use futures::TryStreamExt as _;
use std::collections::HashMap;

/// The external table a `CREATE EXTERNAL TABLE` describes (schema inferred where not given).
/// Options of its store (`'aws.region'`, ...) configure the store of its location in `stores`,
/// for the planner and for the tasks that read it.
pub(crate) async fn external_table(
    state: &SessionState,
    stores: &StoreRegistry,
    cmd: &CreateExternalTable,
) -> Result<ExternalTable> {
    let mut cmd = cmd.clone();
    if stores.take_options_for(&mut cmd.options, &cmd.locations)? {
        // The statement's text holds the credentials: it is not kept as the definition.
        cmd.definition = None;
    }
    refuse_compression(&cmd.file_type, &cmd.options)?;
    let file_type = cmd.file_type.to_uppercase();
    let factory = state
        .table_factories()
        .get(file_type.as_str())
        .cloned()
        .ok_or_else(|| DirkError::Unsupported {
            what: format!("external tables stored as {}", cmd.file_type),
        })?;
    match factory.create(state, &cmd).await {
        Ok(files) => Ok(ExternalTable {
            files,
            definition: cmd,
        }),
        Err(e) => Err(name_the_bad_file(state, factory.as_ref(), &cmd, e)
            .await
            .into()),
    }
}

/// Compressed CSV and JSON files need DataFusion's compression codecs, which Dirk is built
/// without (they are C builds); without this check such files would be read as if
/// uncompressed. (Parquet's `format.compression` is the codec inside the file.)
pub(crate) fn refuse_compression(format: &str, options: &HashMap<String, String>) -> Result<()> {
    if !["csv", "json", "ndjson"].contains(&format.to_lowercase().as_str()) {
        return Ok(());
    }
    match options.get("format.compression").map(|c| c.to_lowercase()) {
        None => Ok(()),
        Some(c) if c.is_empty() || c == "uncompressed" => Ok(()),
        Some(c) => Err(DirkError::Unsupported {
            what: format!(
                "compressed files ('format.compression' '{c}'): Dirk reads and writes \
                 uncompressed CSV and JSON (Parquet compresses inside the file)"
            ),
        }),
    }
}

/// At most this many files are tried one by one to find the one a listing failed on.
const FILES_PROBED: usize = 1000;

/// A listing's schema inference fails without naming the file it failed on (a corrupt Parquet
/// footer, say): each file is tried on its own, and the error names the first that fails.
async fn name_the_bad_file(
    state: &SessionState,
    factory: &dyn datafusion::catalog::TableProviderFactory,
    cmd: &CreateExternalTable,
    error: datafusion::error::DataFusionError,
) -> datafusion::error::DataFusionError {
    // One file of a partitioned table is not a table.
    if !cmd.table_partition_cols.is_empty() {
        return error;
    }
    let extension = format!(".{}", cmd.file_type.to_lowercase());
    let mut probed = 0;
    for location in &cmd.locations {
        let Ok(listing) = ListingTableUrl::parse(location) else {
            return error;
        };
        let Ok(store) = state.runtime_env().object_store(&listing) else {
            return error;
        };
        let Ok(mut files) = listing
            .list_all_files(state, store.as_ref(), &extension)
            .await
        else {
            return error;
        };
        while let Ok(Some(meta)) = files.try_next().await {
            if probed == FILES_PROBED {
                return error;
            }
            probed += 1;
            let file = format!("{}{}", listing.object_store().as_str(), meta.location);
            let one = CreateExternalTable {
                locations: vec![file.clone()],
                ..cmd.clone()
            };
            if let Err(e) = factory.create(state, &one).await {
                return e.context(file);
            }
        }
    }
    error
}

/// Runs a plan that reads files into a DTable. DataFusion lists the files and splits them
/// into byte ranges, one group per partition; each group is read by one task, on the worker
/// that then owns the partition (Dagger's `File`): the data never passes through the driver.
pub(crate) async fn read_plan(executor: &Executor, plan: LogicalPlan) -> Result<DTable> {
    let mut state = executor.planner().state();
    // Split files of any size, so every partition gets a share of the reading.
    state
        .config_mut()
        .options_mut()
        .optimizer
        .repartition_file_min_size = 0;
    let physical = DfDataFrame::new(state, plan).create_physical_plan().await?;
    executor.run_physical(physical, &[]).await
}
