//! The catalog: a session's tables by name, and the one schema DataFusion's planner reads them
//! from. The planner asks this catalog for a table each time it resolves a name, so a table
//! replaced by a statement is seen whole, old or new, and nothing is ever registered twice.

use crate::error::{DirkError, Result};
use crate::exec::DTableScanExec;
use crate::prune::ChunkStatistics;
use crate::table::DTable;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use dirk_engine::Context;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Names of the tables a statement makes for itself while it runs: the planner finds them, but
/// nothing lists them.
const TEMP_PREFIX: &str = "__dirk_temp_";

/// Where an external table's rows come from. The table is resident; before a statement reads
/// it, its files are listed again, and if they changed (added, removed, rewritten) it is read
/// again, as DataFusion would read the files afresh. A statement that changes the table through
/// Dirk (`INSERT`, `UPDATE`, ...) ends this: the table then holds rows its files do not.
pub(crate) struct ExternalSource {
    /// The file listing made at `CREATE EXTERNAL TABLE`: its schema and options stay fixed.
    pub(crate) files: Arc<dyn TableProvider>,
    /// What the last read found.
    pub(crate) stamps: Vec<FileStamp>,
}

/// A file's location, size and version, as its object store reports them.
pub(crate) type FileStamp = (String, u64, i64, Option<String>);

/// A session's tables. DTables live here; every other provider (views, and the tables of a
/// planner state handed to the session builder) lives in `others`, DataFusion's own schema.
pub(crate) struct Catalog {
    engine: Arc<Context>,
    tables: Mutex<BTreeMap<String, DTable>>,
    stats: Arc<ChunkStatistics>,
    others: Arc<dyn SchemaProvider>,
    /// The files of each external table that follows them.
    external: Mutex<HashMap<String, ExternalSource>>,
    temp_counter: AtomicU64,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("tables", &self.tables.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// An empty catalog in front of `others`.
    pub(crate) fn new(
        engine: Arc<Context>,
        stats: Arc<ChunkStatistics>,
        others: Arc<dyn SchemaProvider>,
    ) -> Self {
        Catalog {
            engine,
            tables: Mutex::new(BTreeMap::new()),
            stats,
            others,
            external: Mutex::new(HashMap::new()),
            temp_counter: AtomicU64::new(0),
        }
    }

    /// The tables, locked: while the guard lives no statement registers, replaces or drops a
    /// table, so what a query snapshots and submits under it is ordered against every change.
    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, DTable>> {
        self.tables.lock()
    }

    /// The external tables' sources.
    pub(crate) fn external(&self) -> MutexGuard<'_, HashMap<String, ExternalSource>> {
        self.external.lock()
    }

    /// Names of the tables, sorted (temporary ones left out).
    pub(crate) fn names(&self) -> Vec<String> {
        self.tables
            .lock()
            .keys()
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .cloned()
            .collect()
    }

    /// A snapshot of a table.
    pub(crate) fn get(&self, name: &str) -> Result<DTable> {
        self.tables
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| DirkError::TableNotFound { name: name.into() })
    }

    /// True when a DTable of that name exists.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tables.lock().contains_key(name)
    }

    /// Registers `table` as `name` (replacing a table of that name if `replace`) and runs
    /// `alongside` under the same lock: no query sees the new entry without what `alongside`
    /// submits, or the other way round. Chunks of the old version the new one does not share
    /// are freed.
    pub(crate) fn register_with<T>(
        &self,
        name: &str,
        table: DTable,
        replace: bool,
        alongside: impl FnOnce() -> T,
    ) -> Result<T> {
        let mut tables = self.tables.lock();
        if tables.contains_key(name) && !replace {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let done = alongside();
        // A DTable takes the name from any other provider (a view) that had it.
        self.others.deregister_table(name)?;
        self.external.lock().remove(name);
        let kept: HashSet<_> = table.chunks().map(|c| c.id).collect();
        let replaced = tables.insert(name.to_string(), table);
        if let Some(old) = replaced {
            // Statistics of chunks no table holds any more go with them.
            let live: HashSet<_> = tables
                .values()
                .flat_map(|t| t.chunks().map(|c| c.id))
                .collect();
            self.stats
                .cache()
                .lock()
                .retain(|(id, _), _| live.contains(id));
            drop(tables);
            // A new version (an INSERT) shares its old chunks; free only what it dropped.
            let gone: Vec<_> = old
                .chunks()
                .filter(|c| !kept.contains(&c.id))
                .cloned()
                .collect();
            self.engine.free(&gone)?;
        }
        Ok(done)
    }

    /// Registers a table a statement needs while it runs, under a fresh name with `what` in it;
    /// [`Catalog::remove`] removes it.
    pub(crate) fn register_temp(&self, what: &str, table: DTable) -> Result<String> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEMP_PREFIX}{what}_{n}");
        self.register_with(&name, table, false, || ())?;
        Ok(name)
    }

    /// Moves a table to a new name (`ALTER TABLE ... RENAME TO`); its chunks stay.
    pub(crate) fn rename(&self, from: &str, to: &str, table: DTable) -> Result<()> {
        let mut tables = self.tables.lock();
        if tables.contains_key(to) || self.others.table_exist(to) {
            return Err(DirkError::TableExists { name: to.into() });
        }
        tables.remove(from);
        let mut external = self.external.lock();
        if let Some(source) = external.remove(from) {
            external.insert(to.to_string(), source);
        }
        tables.insert(to.to_string(), table);
        Ok(())
    }

    /// Drops a DTable and frees its chunks; false when there is no DTable of that name.
    pub(crate) fn remove(&self, name: &str) -> Result<bool> {
        let Some(old) = self.tables.lock().remove(name) else {
            return Ok(false);
        };
        self.external.lock().remove(name);
        self.engine
            .free(&old.chunks().cloned().collect::<Vec<_>>())?;
        Ok(true)
    }

    fn provider(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        let table = self.tables.lock().get(name).cloned()?;
        Some(Arc::new(DTableProvider {
            name: name.to_string(),
            table,
            stats: Arc::clone(&self.stats),
        }))
    }
}

#[async_trait]
impl SchemaProvider for Catalog {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.names();
        names.extend(self.others.table_names());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        match self.provider(name) {
            Some(p) => Ok(Some(p)),
            None => self.others.table(name).await,
        }
    }

    /// Views, and providers registered with DataFusion directly, go to DataFusion's schema.
    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        if self.contains(&name) {
            return Err(DirkError::TableExists { name }.into());
        }
        self.others.register_table(name, table)
    }

    fn deregister_table(
        &self,
        name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        self.others.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.contains(name) || self.others.table_exist(name)
    }
}

/// Lets DataFusion plan over a DTable: the scan is a [`DTableScanExec`].
#[derive(Debug)]
pub(crate) struct DTableProvider {
    pub(crate) name: String,
    pub(crate) table: DTable,
    /// Where the scan's column bounds come from (see `prune.rs`).
    pub(crate) stats: Arc<ChunkStatistics>,
}

#[async_trait]
impl TableProvider for DTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(self.table.schema())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // Every column in table order is no projection: the scan then reads chunks whole.
        let width = self.table.schema().fields().len();
        let projection = projection.filter(|p| !p.iter().copied().eq(0..width));
        let schema = match projection {
            Some(p) => Arc::new(self.table.schema().project(p)?),
            None => Arc::clone(self.table.schema()),
        };
        let columns = self
            .stats
            .for_planning(&self.table, projection.map(|p| p.as_slice()))
            .await;
        // The scan keeps the table's hash partitioning when it keeps every key column.
        let hash_columns = self.table.hash_keys().and_then(|keys| {
            keys.iter()
                .map(|k| schema.index_of(k).ok())
                .collect::<Option<Vec<usize>>>()
        });
        Ok(Arc::new(
            DTableScanExec::new(
                0,
                self.name.clone(),
                schema,
                projection.cloned(),
                self.table.num_partitions(),
                Some(self.table.num_rows()),
            )
            .with_hash_columns(hash_columns)
            .with_column_statistics(columns),
        ))
    }
}
