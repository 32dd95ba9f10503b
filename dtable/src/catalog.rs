//! The catalog: a session's tables by name, and the schemas DataFusion's planner reads them
//! from. The planner asks the catalog for a table each time it resolves a name, so a table
//! replaced by a statement is seen whole, old or new, and nothing is ever registered twice.
//!
//! A table lives in the schema that was the planner's default (`datafusion.catalog.
//! default_catalog` and `default_schema`) when it was made: a [`SchemaView`] there shows it,
//! in front of whatever DataFusion keeps in that schema. Names are unique across schemas.

use crate::error::{DirkError, Result};
use crate::exec::DTableScanExec;
use crate::prune::ChunkStatistics;
use crate::table::DTable;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::execution::session_state::SessionState;
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
/// planner state handed to the session builder) lives in DataFusion's own schemas, behind the
/// [`SchemaView`]s.
pub(crate) struct Catalog {
    engine: Arc<Context>,
    tables: Mutex<BTreeMap<String, DTable>>,
    /// The schema each table lives in. Locked after `tables` when both are.
    homes: Mutex<HashMap<String, Location>>,
    /// Where new tables go: the planner's default schema as of the statement running.
    current: Mutex<Location>,
    stats: Arc<ChunkStatistics>,
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
    /// An empty catalog.
    pub(crate) fn new(engine: Arc<Context>, stats: Arc<ChunkStatistics>) -> Self {
        Catalog {
            engine,
            tables: Mutex::new(BTreeMap::new()),
            homes: Mutex::new(HashMap::new()),
            current: Mutex::new((String::new(), String::new())),
            stats,
            external: Mutex::new(HashMap::new()),
            temp_counter: AtomicU64::new(0),
        }
    }

    /// Makes the planner's default schema in `state` the one new tables go to, and shows this
    /// catalog's tables there (installed once per schema).
    pub(crate) fn follow(self: &Arc<Self>, state: &SessionState) -> Result<()> {
        let options = &state.config().options().catalog;
        let home = (
            options.default_catalog.clone(),
            options.default_schema.clone(),
        );
        let list = state.catalog_list();
        let df_catalog = match list.catalog(&home.0) {
            Some(c) => c,
            None => {
                let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                list.register_catalog(home.0.clone(), Arc::clone(&c));
                c
            }
        };
        let existing = df_catalog.schema(&home.1);
        if !existing.as_ref().is_some_and(|s| s.is::<SchemaView>()) {
            let view = SchemaView {
                catalog: Arc::clone(self),
                home: home.clone(),
                others: existing.unwrap_or_else(|| Arc::new(MemorySchemaProvider::new())),
            };
            df_catalog.register_schema(&home.1, Arc::new(view))?;
        }
        *self.current.lock() = home;
        Ok(())
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
        let home = self.current.lock().clone();
        self.homes.lock().insert(name.to_string(), home);
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
        if tables.contains_key(to) {
            return Err(DirkError::TableExists { name: to.into() });
        }
        tables.remove(from);
        let mut homes = self.homes.lock();
        if let Some(home) = homes.remove(from) {
            homes.insert(to.to_string(), home);
        }
        drop(homes);
        let mut external = self.external.lock();
        if let Some(source) = external.remove(from) {
            external.insert(to.to_string(), source);
        }
        tables.insert(to.to_string(), table);
        Ok(())
    }

    /// Drops a DTable and frees its chunks; false when there is no DTable of that name.
    pub(crate) fn remove(&self, name: &str) -> Result<bool> {
        let mut tables = self.tables.lock();
        let Some(old) = tables.remove(name) else {
            return Ok(false);
        };
        self.homes.lock().remove(name);
        drop(tables);
        self.external.lock().remove(name);
        self.engine
            .free(&old.chunks().cloned().collect::<Vec<_>>())?;
        Ok(true)
    }

    /// The provider of table `name` if it lives in `home`.
    fn provider(&self, name: &str, home: &Location) -> Option<Arc<dyn TableProvider>> {
        let tables = self.tables.lock();
        let table = tables.get(name)?;
        if self.homes.lock().get(name) != Some(home) {
            return None;
        }
        Some(Arc::new(DTableProvider {
            name: name.to_string(),
            table: table.clone(),
            stats: Arc::clone(&self.stats),
        }))
    }

    /// Names of the tables living in `home` (temporary ones left out).
    fn names_in(&self, home: &Location) -> Vec<String> {
        let tables = self.tables.lock();
        let homes = self.homes.lock();
        tables
            .keys()
            .filter(|n| !n.starts_with(TEMP_PREFIX) && homes.get(*n) == Some(home))
            .cloned()
            .collect()
    }
}

/// A (catalog, schema) pair.
pub(crate) type Location = (String, String);

/// One schema of the planner as Dirk shows it: the catalog's tables that live there, in front
/// of the providers DataFusion keeps there (views, tables of a planner state handed to the
/// builder).
#[derive(Debug)]
pub(crate) struct SchemaView {
    catalog: Arc<Catalog>,
    home: Location,
    others: Arc<dyn SchemaProvider>,
}

#[async_trait]
impl SchemaProvider for SchemaView {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.catalog.names_in(&self.home);
        names.extend(self.others.table_names());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        match self.catalog.provider(name, &self.home) {
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
        if self.catalog.provider(&name, &self.home).is_some() {
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
        self.catalog.provider(name, &self.home).is_some() || self.others.table_exist(name)
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
