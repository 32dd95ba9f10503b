//! `COPY (query) TO 'location'` and `INSERT` into an external table: a query's result written
//! as files, all or nothing.
//!
//! The query runs as any other, as stages of tasks; its last task writes the files (DataFusion's
//! sinks, on the worker) into a hidden staging directory beside the output, `_dirk-<id>/`, which
//! DataFusion's listings (Dirk's included) and Spark skip. Once every file is written, the driver
//! moves them to their final names and writes `_SUCCESS` (not beside partition directories); a failed or cancelled write, or a move
//! that fails, removes what it staged and moved, so the output is as it was. The moves are one
//! rename per file (on S3 a server-side copy and a delete): a reader listing the output while
//! they run can see some of the new files before the others. Store options (`'aws.region'`, ...)
//! in the statement's `OPTIONS` configure the output's store, as a table's do.

use crate::catalog::ExternalTable;
use crate::error::{DirkError, Result};
use crate::executor::Executor;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::dml::{CopyTo, InsertOp};
use datafusion::logical_expr::LogicalPlan;
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Runs `copy`; returns the number of rows written.
pub(crate) async fn copy_to(executor: &Executor, copy: CopyTo) -> Result<u64> {
    write_files(executor, copy, Commit::Copy).await
}

/// `INSERT [OVERWRITE] INTO` an external table: the rows of `input` written as new files of the
/// table's format into its directory (into partition directories for a partitioned table), all
/// or nothing. `OVERWRITE` then removes the files that were there before.
pub(crate) async fn insert_files(
    executor: &Executor,
    table: &ExternalTable,
    input: LogicalPlan,
    op: InsertOp,
) -> Result<u64> {
    let definition = &table.definition;
    let name = definition.name.table();
    let commit = match op {
        InsertOp::Append => Commit::Append,
        InsertOp::Overwrite => Commit::Overwrite,
        InsertOp::Replace => {
            return Err(DirkError::Unsupported {
                what: "REPLACE INTO (a table has no key to replace rows by)".into(),
            })
        }
    };
    let [location] = definition.locations.as_slice() else {
        return Err(DirkError::Unsupported {
            what: format!("INSERT into `{name}`, an external table over several locations"),
        });
    };
    if !ListingTableUrl::parse(location)?.is_collection() {
        return Err(DirkError::Unsupported {
            what: format!("INSERT into `{name}`, an external table over one file ({location})"),
        });
    }
    let state = executor.planner().state();
    let format = state
        .get_file_format_factory(&definition.file_type.to_lowercase())
        .ok_or_else(|| DirkError::Unsupported {
            what: format!("writing files stored as {}", definition.file_type),
        })?;
    let directory = if location.ends_with('/') {
        location.clone()
    } else {
        format!("{location}/")
    };
    let copy = CopyTo::new(
        Arc::new(input),
        directory,
        definition.table_partition_cols.clone(),
        format_as_file_type(format),
        definition.options.clone(),
    );
    write_files(executor, copy, commit).await
}

/// How a write's staged files become its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// `COPY`: moved into place, then `_SUCCESS` beside them (unless partition directories).
    Copy,
    /// `INSERT`: moved into place beside the files there.
    Append,
    /// `INSERT OVERWRITE`: moved into place, then the files there before are removed.
    Overwrite,
}

/// Writes `copy`'s rows into staging, then commits them as `commit` says; returns the number of
/// rows written.
async fn write_files(executor: &Executor, mut copy: CopyTo, commit: Commit) -> Result<u64> {
    crate::ingest::refuse_compression(&copy.file_type.get_ext(), &copy.options)?;
    let target = ListingTableUrl::parse(&copy.output_url)?;
    let location = [copy.output_url.clone()];
    executor
        .stores()
        .take_options_for(&mut copy.options, &location)?;
    let store = executor
        .planner()
        .runtime_env()
        .object_store(target.object_store())?;
    let out = Output::of(&copy.output_url, target.prefix());
    let staging = out
        .parent
        .clone()
        .join(format!("_dirk-{}", write_id()).as_str());
    let staged_url = |p: &Path| format!("{}{p}", target.object_store().as_str());
    let staged_target = match &out.file {
        Some(name) => staged_url(&staging.clone().join(name.as_str())),
        None => format!("{}/", staged_url(&staging)),
    };
    let staged_copy = CopyTo::new(
        Arc::clone(&copy.input),
        staged_target,
        copy.partition_by.clone(),
        Arc::clone(&copy.file_type),
        copy.options.clone(),
    );
    let written = async {
        let stream = executor
            .execute_stream(LogicalPlan::Copy(staged_copy))
            .await?;
        let batches: Vec<arrow::array::RecordBatch> = stream.try_collect().await?;
        Ok::<u64, crate::error::DirkError>(rows_counted(&batches))
    }
    .await;
    let result = match written {
        Ok(rows) => move_into_place(
            store.as_ref(),
            &staging,
            &out,
            commit,
            copy.partition_by.is_empty(),
        )
        .await
        .map(|()| rows)
        .map_err(|e| DataFusionError::ObjectStore(Box::new(e)).into()),
        Err(e) => Err(e),
    };
    remove_all(store.as_ref(), &staging).await;
    if target.scheme() == "file" {
        // A local file system keeps the emptied staging directories.
        let _ = std::fs::remove_dir_all(format!("/{staging}"));
    }
    result
}

/// Where a `COPY` writes: a directory, or one file in a directory.
struct Output {
    /// The directory the files go to (a file's directory).
    parent: Path,
    /// The file's name, when the output is one file.
    file: Option<String>,
}

impl Output {
    /// A location ending in `/`, or whose last part has no extension, is a directory (as
    /// DataFusion decides).
    fn of(location: &str, prefix: &Path) -> Output {
        let last = prefix.filename().unwrap_or_default();
        if location.ends_with('/') || !last.contains('.') {
            return Output {
                parent: prefix.clone(),
                file: None,
            };
        }
        let parts: Vec<_> = prefix.parts().collect();
        Output {
            parent: Path::from_iter(parts[..parts.len() - 1].iter().cloned()),
            file: Some(last.to_string()),
        }
    }
}

/// Moves every staged file to its final name, then, as `commit` says, marks a `COPY`'s
/// directory complete (not beside partition directories, `flat` false: DataFusion's listing of
/// hive-style partition directories refuses a file there) or removes what an overwrite
/// replaces. On a failure, the files moved so far are removed again and the old ones stay.
async fn move_into_place(
    store: &dyn ObjectStore,
    staging: &Path,
    out: &Output,
    commit: Commit,
    flat: bool,
) -> object_store::Result<()> {
    let staged: Vec<Path> = store
        .list(Some(staging))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let replaced: Vec<Path> = match commit {
        Commit::Overwrite => {
            store
                .list(Some(&out.parent))
                .map_ok(|m| m.location)
                .try_filter(|p| std::future::ready(visible_under(p, &out.parent)))
                .try_collect()
                .await?
        }
        Commit::Copy | Commit::Append => Vec::new(),
    };
    let mut moved = Vec::with_capacity(staged.len());
    for from in &staged {
        let relative: Vec<_> = from
            .prefix_match(staging)
            .map(|parts| parts.collect())
            .unwrap_or_default();
        let to = match &out.file {
            Some(name) => out.parent.clone().join(name.as_str()),
            None => relative
                .into_iter()
                .fold(out.parent.clone(), |p, part| p.join(part)),
        };
        if let Err(e) = store.rename(from, &to).await {
            for done in &moved {
                let _ = store.delete(done).await;
            }
            return Err(e);
        }
        moved.push(to);
    }
    if commit == Commit::Copy && flat && out.file.is_none() {
        store
            .put(&out.parent.clone().join("_SUCCESS"), PutPayload::default())
            .await?;
    }
    for old in &replaced {
        store.delete(old).await?;
    }
    Ok(())
}

/// Whether a listing of `dir` shows `path`: no part below `dir` is hidden (`_` or `.` first,
/// as staging directories and markers are).
fn visible_under(path: &Path, dir: &Path) -> bool {
    path.prefix_match(dir).is_some_and(|mut parts| {
        parts.all(|p| !p.as_ref().starts_with('_') && !p.as_ref().starts_with('.'))
    })
}

/// Deletes every object under `prefix`; best effort (a leftover is hidden and harmless).
async fn remove_all(store: &dyn ObjectStore, prefix: &Path) {
    let Ok(found) = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect::<Vec<_>>()
        .await
    else {
        return;
    };
    for p in found {
        let _ = store.delete(&p).await;
    }
}

/// The `count` a sink reports, summed over its batches.
fn rows_counted(batches: &[arrow::array::RecordBatch]) -> u64 {
    use arrow::array::{Array, UInt64Array};
    batches
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .flat_map(|a| (0..a.len()).map(move |i| a.value(i)))
        .sum()
}

/// A name no other write of this process or another one picks.
fn write_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}
