//! The DataFrame API: method chains that build a DataFusion logical plan, run by Dirk's stages
//! and tasks when collected. Expressions are DataFusion's (`col`, `lit`, functions); see
//! [`crate::prelude`].

use crate::error::{DirkError, Result};
use crate::session::Session;
use crate::stream::RecordBatchStream;
use crate::table::DTable;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::datasource::file_format::csv::CsvFormatFactory;
use datafusion::datasource::file_format::json::JsonFormatFactory;
use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
use datafusion::datasource::file_format::{format_as_file_type, FileFormatFactory};
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{Expr, Partitioning, SortExpr};
use std::sync::Arc;

/// How many rows [`DataFrame::show`] prints.
const SHOW_ROWS: usize = 20;

/// A query, planned lazily. Each method returns a new DataFrame with one more step in its plan;
/// nothing runs until [`collect`](Self::collect), [`persist`](Self::persist),
/// [`show`](Self::show) or [`count`](Self::count). Then the plan is optimized by DataFusion, cut
/// into stages and run as tasks on the session's workers.
///
/// ```no_run
/// # async fn demo(session: &dirk_dtable::Session) -> dirk_dtable::Result<()> {
/// use dirk_dtable::prelude::*;
/// let top = session
///     .table_df("lineitem")
///     .await?
///     .filter(col("l_quantity").gt(lit(45)))?
///     .group_by(vec![col("l_returnflag")])
///     .agg(vec![sum(col("l_extendedprice")).alias("revenue")])?
///     .sort(vec![col("revenue").sort(false, true)])?
///     .limit(0, Some(3))?;
/// top.show().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DataFrame {
    session: Session,
    df: DfDataFrame,
}

/// The groups of a DataFrame, waiting for their aggregates: `df.group_by(keys).agg(aggs)`.
pub struct GroupBy {
    frame: DataFrame,
    keys: Vec<Expr>,
}

impl GroupBy {
    /// One row per group: the keys, then `aggregates` (`sum(col("x"))`, `count(lit(1))`, ...).
    pub fn agg(self, aggregates: Vec<Expr>) -> Result<DataFrame> {
        self.frame.aggregate(self.keys, aggregates)
    }
}

impl DataFrame {
    pub(crate) fn new(session: Session, df: DfDataFrame) -> Self {
        DataFrame { session, df }
    }

    fn step(
        self,
        f: impl FnOnce(DfDataFrame) -> datafusion::error::Result<DfDataFrame>,
    ) -> Result<Self> {
        Ok(DataFrame {
            session: self.session,
            df: f(self.df)?,
        })
    }

    /// The DataFusion DataFrame underneath.
    pub fn inner(&self) -> &DfDataFrame {
        &self.df
    }

    /// Applies any DataFusion DataFrame method chain, for what this API does not wrap.
    pub fn map(
        self,
        f: impl FnOnce(DfDataFrame) -> datafusion::error::Result<DfDataFrame>,
    ) -> Result<Self> {
        self.step(f)
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// Keeps the given expressions as columns (`col("a")`, `(col("a") + lit(1)).alias("b")`).
    pub fn select(self, exprs: Vec<Expr>) -> Result<Self> {
        self.step(|df| df.select(exprs))
    }

    /// Keeps the named columns.
    pub fn select_columns(self, columns: &[&str]) -> Result<Self> {
        self.step(|df| df.select_columns(columns))
    }

    /// Keeps the rows where `predicate` is true.
    pub fn filter(self, predicate: Expr) -> Result<Self> {
        self.step(|df| df.filter(predicate))
    }

    /// Adds a column (or replaces the one of that name).
    pub fn with_column(self, name: &str, expr: Expr) -> Result<Self> {
        self.step(|df| df.with_column(name, expr))
    }

    /// Renames a column.
    pub fn with_column_renamed(self, old: &str, new: &str) -> Result<Self> {
        self.step(|df| df.with_column_renamed(old, new))
    }

    /// Drops the named columns.
    pub fn drop_columns(self, columns: &[&str]) -> Result<Self> {
        self.step(|df| df.drop_columns(columns))
    }

    /// Groups rows by `keys`; finish with [`GroupBy::agg`].
    pub fn group_by(self, keys: Vec<Expr>) -> GroupBy {
        GroupBy { frame: self, keys }
    }

    /// Groups by `keys` and computes `aggregates` per group (no keys: one row).
    pub fn aggregate(self, keys: Vec<Expr>, aggregates: Vec<Expr>) -> Result<Self> {
        self.step(|df| df.aggregate(keys, aggregates))
    }

    /// Adds window function columns (`row_number()`, `sum(x) OVER (...)` built with
    /// `ExprFunctionExt`).
    pub fn window(self, exprs: Vec<Expr>) -> Result<Self> {
        self.step(|df| df.window(exprs))
    }

    /// Joins on equal columns: `left_cols[i] = right_cols[i]`. `how` is inner, left, right,
    /// full, left semi, left anti, ...
    pub fn join(
        self,
        right: DataFrame,
        how: JoinType,
        left_cols: &[&str],
        right_cols: &[&str],
    ) -> Result<Self> {
        let right = self.same_session(right)?;
        self.step(|df| df.join(right, how, left_cols, right_cols, None))
    }

    /// Joins on arbitrary predicates (equalities among them become hash join keys).
    pub fn join_on(self, right: DataFrame, how: JoinType, on: Vec<Expr>) -> Result<Self> {
        let right = self.same_session(right)?;
        self.step(|df| df.join_on(right, how, on))
    }

    /// Sorts by `exprs` (`col("a").sort(ascending, nulls_first)`).
    pub fn sort(self, exprs: Vec<SortExpr>) -> Result<Self> {
        self.step(|df| df.sort(exprs))
    }

    /// Skips `skip` rows, then keeps at most `fetch` (all when `None`).
    pub fn limit(self, skip: usize, fetch: Option<usize>) -> Result<Self> {
        self.step(|df| df.limit(skip, fetch))
    }

    /// Removes duplicate rows.
    pub fn distinct(self) -> Result<Self> {
        self.step(|df| df.distinct())
    }

    /// The rows of both (`UNION ALL`).
    pub fn union(self, other: DataFrame) -> Result<Self> {
        let other = self.same_session(other)?;
        self.step(|df| df.union(other))
    }

    /// The distinct rows of both (`UNION`).
    pub fn union_distinct(self, other: DataFrame) -> Result<Self> {
        let other = self.same_session(other)?;
        self.step(|df| df.union_distinct(other))
    }

    /// Rows in both (`INTERSECT`).
    pub fn intersect(self, other: DataFrame) -> Result<Self> {
        let other = self.same_session(other)?;
        self.step(|df| df.intersect(other))
    }

    /// Rows of this one not in `other` (`EXCEPT`).
    pub fn except(self, other: DataFrame) -> Result<Self> {
        let other = self.same_session(other)?;
        self.step(|df| df.except(other))
    }

    /// Spreads the rows over `n` partitions, batch by batch. Persisted, the DTable has `n`
    /// partitions.
    pub fn repartition(self, n: usize) -> Result<Self> {
        self.step(|df| df.repartition(Partitioning::RoundRobinBatch(n.max(1))))
    }

    /// Puts rows with equal `keys` into the same of `n` partitions (hash partitioning).
    pub fn repartition_by(self, keys: Vec<Expr>, n: usize) -> Result<Self> {
        self.step(|df| df.repartition(Partitioning::Hash(keys, n.max(1))))
    }

    fn same_session(&self, other: DataFrame) -> Result<DfDataFrame> {
        if !self.session.same_as(&other.session) {
            return Err(DirkError::Unsupported {
                what: "combining DataFrames of two different sessions".into(),
            });
        }
        Ok(other.df)
    }

    /// Runs the query; the result stays on the workers as a DTable.
    pub async fn persist(self) -> Result<DTable> {
        self.session.run_plan(self.df.logical_plan().clone()).await
    }

    /// Runs the query and streams the result to the caller: the batches of the final stage's
    /// partition 0, then 1, ..., each partition's as soon as its task has finished (and freed on
    /// its worker once fetched), while later partitions still run. Dropping the stream cancels
    /// what still runs.
    pub async fn execute_stream(self) -> Result<RecordBatchStream> {
        self.session
            .execute_stream(self.df.logical_plan().clone())
            .await
    }

    /// Writes the result as Parquet files under `location`: a directory (a local path or a
    /// store URL such as `s3://bucket/prefix/`), or one file when its name has an extension.
    /// The workers write and the write is all or nothing, as `COPY ... TO` (see the README);
    /// returns the number of rows written.
    pub async fn write_parquet(self, location: &str) -> Result<u64> {
        self.write(location, Arc::new(ParquetFormatFactory::new()))
            .await
    }

    /// Writes the result as CSV files with a header line; see
    /// [`write_parquet`](Self::write_parquet).
    pub async fn write_csv(self, location: &str) -> Result<u64> {
        self.write(location, Arc::new(CsvFormatFactory::new()))
            .await
    }

    /// Writes the result as newline-delimited JSON files; see
    /// [`write_parquet`](Self::write_parquet).
    pub async fn write_json(self, location: &str) -> Result<u64> {
        self.write(location, Arc::new(JsonFormatFactory::new()))
            .await
    }

    async fn write(self, location: &str, format: Arc<dyn FileFormatFactory>) -> Result<u64> {
        let copy = CopyTo::new(
            Arc::new(self.df.logical_plan().clone()),
            location.to_string(),
            Vec::new(),
            format_as_file_type(format),
            std::collections::HashMap::new(),
        );
        self.session.copy(copy).await
    }

    /// Runs the query and brings the whole result to the caller (built on
    /// [`execute_stream`](Self::execute_stream)). A result past the session's
    /// [`result_limit`](crate::SessionBuilder::result_limit) fails with
    /// [`DirkError::ResultTooLarge`](crate::DirkError::ResultTooLarge) as soon as it passes it.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt as _;
        let limit = self.session.core().result_limit;
        let mut stream = self.execute_stream().await?;
        let (mut batches, mut bytes) = (Vec::new(), 0u64);
        while let Some(batch) = stream.try_next().await? {
            bytes += batch.get_array_memory_size() as u64;
            if bytes > limit {
                return Err(crate::DirkError::ResultTooLarge { limit });
            }
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Counts the rows (a `count(*)` run as tasks; only the count comes back).
    pub async fn count(self) -> Result<usize> {
        let counted = self.step(|df| {
            df.aggregate(
                vec![],
                vec![datafusion::functions_aggregate::count::count_all().alias("n")],
            )
        })?;
        let batches = counted.collect().await?;
        let n = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
            })
            .map(|a| a.value(0))
            .unwrap_or(0);
        Ok(n as usize)
    }

    /// The first `n` rows as a text table.
    pub async fn to_table_string(self, n: usize) -> Result<String> {
        let batches = self.limit(0, Some(n))?.collect().await?;
        Ok(arrow::util::pretty::pretty_format_batches(&batches)
            .map_err(datafusion::error::DataFusionError::from)?
            .to_string())
    }

    /// Prints the first 20 rows.
    pub async fn show(self) -> Result<()> {
        self.show_limit(SHOW_ROWS).await
    }

    /// Prints the first `n` rows.
    pub async fn show_limit(self, n: usize) -> Result<()> {
        println!("{}", self.to_table_string(n).await?);
        Ok(())
    }

    /// The staged plan, as `EXPLAIN` shows it.
    pub async fn explain(self) -> Result<String> {
        self.session.explain_plan(self.df).await
    }
}
