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
use datafusion::datasource::listing::{
    ListingTable, ListingTableConfig, ListingTableConfigExt as _, ListingTableUrl,
};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use dirk_engine::Context;
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// Names of the tables a statement makes for itself while it runs: the planner finds them, but
/// nothing lists them.
const TEMP_PREFIX: &str = "__dirk_temp_";

/// An external table: a listing of files that stays in its store (Dagger's `File`). Each query
/// that reads it lists the files afresh and its tasks read their splits straight from the
/// store; `INSERT` writes new files beside them. Nothing of it is resident.
#[derive(Clone)]
pub(crate) struct ExternalTable {
    /// The file listing made at `CREATE EXTERNAL TABLE`: its schema and options stay fixed.
    pub(crate) files: Arc<dyn TableProvider>,
    /// The statement that made it, less its store options: the format, options and partition
    /// columns the files an `INSERT` writes take.
    pub(crate) definition: CreateExternalTable,
}

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
    /// External tables: names shared with `tables` (a name is one or the other). Locked after
    /// `tables` and `homes` when several are.
    external: Mutex<BTreeMap<String, ExternalTable>>,
    /// The planner, for reading a location named in `FROM` (see [`Catalog::location_table`]).
    planner: OnceLock<Weak<RwLock<SessionState>>>,
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
            external: Mutex::new(BTreeMap::new()),
            planner: OnceLock::new(),
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

    /// Lets queries name a location in `FROM`, planned with `planner`'s state.
    pub(crate) fn read_locations_with(&self, planner: Weak<RwLock<SessionState>>) {
        let _ = self.planner.set(planner);
    }

    /// `SELECT * FROM 's3://bucket/file.parquet'` (or a local path, or a directory): the files
    /// there as an external table for this one statement, format and schema inferred, as
    /// DataFusion's URL tables are. Only names that look like a location (a scheme, a `/`, or a
    /// file extension DataFusion reads) are tried, so a mistyped table name stays an unknown
    /// table.
    async fn location_table(
        &self,
        name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let looks_like_location = name.contains("://")
            || name.contains('/')
            || [".parquet", ".csv", ".json", ".ndjson", ".arrow", ".avro"]
                .iter()
                .any(|ext| name.to_lowercase().ends_with(ext));
        if !looks_like_location {
            return Ok(None);
        }
        let Some(state) = self
            .planner
            .get()
            .and_then(Weak::upgrade)
            .map(|s| s.read().clone())
        else {
            return Ok(None);
        };
        let Ok(url) = ListingTableUrl::parse(name) else {
            return Ok(None);
        };
        let config = ListingTableConfig::new(url).infer_options(&state).await?;
        let config = config
            .infer_partitions_from_path(&state)
            .await?
            .infer_schema(&state)
            .await?;
        Ok(Some(Arc::new(ListingTable::try_new(config)?)))
    }

    /// The external table `name`, if there is one.
    pub(crate) fn external(&self, name: &str) -> Option<ExternalTable> {
        self.external.lock().get(name).cloned()
    }

    /// Names of the tables, resident and external, sorted (temporary ones left out).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tables
            .lock()
            .keys()
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .cloned()
            .collect();
        names.extend(self.external.lock().keys().cloned());
        names.sort();
        names
    }

    /// A snapshot of a resident table; an external table has none, and says so.
    pub(crate) fn get(&self, name: &str) -> Result<DTable> {
        if let Some(table) = self.tables.lock().get(name) {
            return Ok(table.clone());
        }
        if self.external.lock().contains_key(name) {
            return Err(DirkError::ExternalTable { name: name.into() });
        }
        Err(DirkError::TableNotFound { name: name.into() })
    }

    /// True when a table of that name exists, resident or external.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tables.lock().contains_key(name) || self.external.lock().contains_key(name)
    }

    /// Registers the external table `name`, replacing a table of that name (resident or
    /// external) if `replace`.
    pub(crate) fn register_external(
        &self,
        name: &str,
        table: ExternalTable,
        replace: bool,
    ) -> Result<()> {
        let mut tables = self.tables.lock();
        if !replace && (tables.contains_key(name) || self.external.lock().contains_key(name)) {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let home = self.current.lock().clone();
        self.homes.lock().insert(name.to_string(), home);
        let replaced = tables.remove(name);
        self.external.lock().insert(name.to_string(), table);
        match replaced {
            Some(old) => self.release(tables, &old, &HashSet::new()),
            None => Ok(()),
        }
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
        if !replace && (tables.contains_key(name) || self.external.lock().contains_key(name)) {
            return Err(DirkError::TableExists { name: name.into() });
        }
        let done = alongside();
        let kept: HashSet<_> = table.chunks().map(|c| c.id).collect();
        if let Some(old) = self.insert(&mut tables, name, table) {
            self.release(tables, &old, &kept)?;
        }
        Ok(done)
    }

    /// Replaces table `name` by `table`, running `alongside` under the lock, and returns the
    /// version replaced with its chunks still held: the caller keeps the change
    /// ([`Catalog::release_replaced`]) or puts the old version back (`register_with`).
    pub(crate) fn replace_holding<T>(
        &self,
        name: &str,
        table: DTable,
        alongside: impl FnOnce() -> T,
    ) -> (T, Option<DTable>) {
        let mut tables = self.tables.lock();
        let done = alongside();
        let old = self.insert(&mut tables, name, table);
        (done, old)
    }

    /// Frees what `old` (from [`Catalog::replace_holding`]) held that table `name` does not.
    pub(crate) fn release_replaced(&self, name: &str, old: &DTable) -> Result<()> {
        let tables = self.tables.lock();
        let kept: HashSet<_> = tables
            .get(name)
            .map(|t| t.chunks().map(|c| c.id).collect())
            .unwrap_or_default();
        self.release(tables, old, &kept)
    }

    fn insert(
        &self,
        tables: &mut MutexGuard<'_, BTreeMap<String, DTable>>,
        name: &str,
        table: DTable,
    ) -> Option<DTable> {
        let home = self.current.lock().clone();
        self.homes.lock().insert(name.to_string(), home);
        self.external.lock().remove(name);
        tables.insert(name.to_string(), table)
    }

    /// Frees the chunks of `old`, a table just replaced or dropped under the `tables` lock,
    /// that are not `kept` (a new version, such as an INSERT's, shares its old chunks), and
    /// forgets the statistics of chunks no table holds any more.
    fn release(
        &self,
        tables: MutexGuard<'_, BTreeMap<String, DTable>>,
        old: &DTable,
        kept: &HashSet<dirk_engine::ChunkId>,
    ) -> Result<()> {
        let live: HashSet<_> = tables
            .values()
            .flat_map(|t| t.chunks().map(|c| c.id))
            .collect();
        self.stats
            .cache()
            .lock()
            .retain(|(id, _), _| live.contains(id));
        drop(tables);
        let gone: Vec<_> = old
            .chunks()
            .filter(|c| !kept.contains(&c.id))
            .cloned()
            .collect();
        self.engine.free(&gone)?;
        Ok(())
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

    /// Drops a table (freeing a resident one's chunks; an external one's files stay); false
    /// when there is no table of that name.
    pub(crate) fn remove(&self, name: &str) -> Result<bool> {
        let mut tables = self.tables.lock();
        let old = tables.remove(name);
        let external = self.external.lock().remove(name);
        if old.is_none() && external.is_none() {
            return Ok(false);
        }
        self.homes.lock().remove(name);
        drop(tables);
        let Some(old) = old else {
            return Ok(true);
        };
        self.engine
            .free(&old.chunks().cloned().collect::<Vec<_>>())?;
        Ok(true)
    }

    /// The provider of table `name` if it lives in `home`: a DTable's scan, or an external
    /// table's file listing.
    fn provider(&self, name: &str, home: &Location) -> Option<Arc<dyn TableProvider>> {
        let tables = self.tables.lock();
        if self.homes.lock().get(name) != Some(home) {
            return None;
        }
        if let Some(table) = tables.get(name) {
            return Some(Arc::new(DTableProvider {
                name: name.to_string(),
                table: table.clone(),
                stats: Arc::clone(&self.stats),
            }));
        }
        self.external.lock().get(name).map(|e| Arc::clone(&e.files))
    }

    /// Names of the tables living in `home` (temporary ones left out).
    fn names_in(&self, home: &Location) -> Vec<String> {
        let tables = self.tables.lock();
        let homes = self.homes.lock();
        let external = self.external.lock();
        tables
            .keys()
            .chain(external.keys())
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
        if let Some(p) = self.catalog.provider(name, &self.home) {
            return Ok(Some(p));
        }
        match self.others.table(name).await? {
            Some(p) => Ok(Some(p)),
            None => self.catalog.location_table(name).await,
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
