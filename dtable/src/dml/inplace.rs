//! The DataFrames.jl-style in-place operators of a session (`update`, `delete_where`,
//! `append`, `with_column_inplace`, `fill_null`, `rename_column`, `drop_columns`,
//! `sort_inplace`, `truncate`). Each runs as tasks on the workers that own the table's chunks,
//! like the SQL statements, and returns the number of rows it changed.

use crate::dml::as_they_are;
use crate::error::{DirkError, Result};
use crate::kernels::fragment::encode_with_header;
use crate::kernels::mutation::Step;
use crate::session::Session;
use crate::table::DTable;
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use dirk_engine::ChunkRef;

impl Session {
    fn df_schema_of(&self, name: &str) -> Result<(DTable, DFSchema)> {
        let table = self.table(name)?;
        let schema = DFSchema::try_from_qualified_schema(name, table.schema())?;
        Ok((table, schema))
    }

    /// Sets `assignments` (column, new value) on the rows where `predicate` is true, in place.
    /// Returns the number of rows updated.
    pub async fn update(
        &self,
        table: &str,
        predicate: Expr,
        assignments: Vec<(&str, Expr)>,
    ) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        let mut typed = Vec::with_capacity(assignments.len());
        for (column, value) in assignments {
            let i = t.schema().index_of(column)?;
            typed.push((i, value.cast_to(t.schema().field(i).data_type(), &schema)?));
        }
        self.update_rows(table, &schema, Some(predicate), typed)
            .await
    }

    /// Deletes the rows where `predicate` is true. Returns the number of rows deleted.
    pub async fn delete_where(&self, table: &str, predicate: Expr) -> Result<u64> {
        let (_, schema) = self.df_schema_of(table)?;
        self.delete_rows(table, &schema, Some(predicate)).await
    }

    /// Appends `batches` (of the table's column types) as new chunks. Returns the rows added.
    pub async fn append(&self, table: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let mut t = self.table(table)?;
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let schema = first.schema();
        let types = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        if types(&schema) != types(t.schema()) {
            return Err(DirkError::SchemaMismatch {
                detail: format!(
                    "table `{table}` has columns {}; the batches have {}",
                    t.schema(),
                    schema
                ),
            });
        }
        let new = self.put_batches(schema, batches)?;
        let rows = new.num_rows();
        t.append(new)?;
        self.register_replacing(table, t)?;
        Ok(rows)
    }

    /// Appends the result of a DataFrame (run as tasks; its chunks join the table where they
    /// were made). Returns the rows added.
    pub async fn append_df(&self, table: &str, df: crate::DataFrame) -> Result<u64> {
        self.insert_plan(table, df.inner().logical_plan().clone())
            .await
    }

    /// Sets column `name` to `value` on every row: in place when the column exists, as a new
    /// column (existing columns untouched) when it does not. Returns the rows changed.
    pub async fn with_column_inplace(&self, table: &str, name: &str, value: Expr) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        if t.schema().index_of(name).is_ok() {
            return self
                .update(table, datafusion::prelude::lit(true), vec![(name, value)])
                .await;
        }
        self.add_column(table, &schema, value, name.to_string(), false)
            .await?;
        Ok(t.num_rows())
    }

    /// Replaces nulls in `column` by `value`, in place. Returns the rows changed.
    pub async fn fill_null(&self, table: &str, column: &str, value: Expr) -> Result<u64> {
        let predicate = datafusion::prelude::col(column).is_null();
        self.update(table, predicate, vec![(column, value)]).await
    }

    /// Renames a column (the catalog changes; no data moves). Returns 0: no row changes.
    pub async fn rename_column(&self, table: &str, from: &str, to: &str) -> Result<u64> {
        self.rename_column_in(table, from, to).await?;
        Ok(0)
    }

    /// Drops columns; the others keep their buffers. Returns the table's rows.
    pub async fn drop_columns(&self, table: &str, columns: &[&str]) -> Result<u64> {
        let (t, schema) = self.df_schema_of(table)?;
        for c in columns {
            t.schema().index_of(c)?;
        }
        let exprs: Vec<(Expr, String)> = as_they_are(&schema)
            .into_iter()
            .filter(|(_, n)| !columns.contains(&n.as_str()))
            .collect();
        if exprs.is_empty() {
            return Err(DirkError::SchemaMismatch {
                detail: format!("dropping every column of `{table}`"),
            });
        }
        let nullable = vec![false; exprs.len()];
        self.project_columns(table, &schema, exprs, nullable)
            .await?;
        Ok(t.num_rows())
    }

    /// Sorts the table by `by`: the table's rows are replaced by the sorted result, kept in
    /// the session's partition count, each partition a consecutive range. Returns the rows.
    pub async fn sort_inplace(
        &self,
        table: &str,
        by: Vec<datafusion::logical_expr::SortExpr>,
    ) -> Result<u64> {
        let _one_at_a_time = self.mutation_lock().lock().await;
        let t = self.table(table)?;
        let plan = self
            .planner()
            .table(table)
            .await?
            .sort(by)?
            .into_unoptimized_plan();
        let sorted = self.run_plan(plan).await?;
        let ranges = self.split_ranges(sorted, t.num_partitions().max(1)).await?;
        self.register_replacing(table, ranges)?;
        Ok(t.num_rows())
    }

    /// `table`'s rows in order, cut into `n` partitions of consecutive rows. Each chunk is cut
    /// by a task on its own worker; the pieces stay there.
    async fn split_ranges(&self, table: DTable, n: usize) -> Result<DTable> {
        let total = table.num_rows();
        let bounds: Vec<u64> = (1..n as u64).map(|p| total * p / n as u64).collect();
        let mut offset = 0;
        let sliced = self
            .each_chunk(&table, "Slice", |c| {
                let cuts: Vec<u64> = bounds
                    .iter()
                    .filter(|b| **b > offset && **b < offset + c.rows)
                    .map(|b| b - offset)
                    .collect();
                offset += c.rows;
                encode_with_header(&Step::Slice { cuts }, &[])
            })
            .await?;
        // A chunk's first piece belongs to the partition whose range holds its first row.
        let mut partitions: Vec<Vec<ChunkRef>> = vec![Vec::new(); n];
        let mut offset = 0;
        for (c, pieces) in sliced {
            let first = bounds.iter().filter(|b| **b <= offset).count();
            for (k, piece) in pieces.into_iter().enumerate() {
                partitions[(first + k).min(n - 1)].push(piece);
            }
            offset += c.rows;
        }
        self.engine()
            .free(&table.chunks().cloned().collect::<Vec<_>>())?;
        Ok(DTable::new(table.schema().clone(), partitions))
    }

    /// Removes every row. Returns the number removed.
    pub async fn truncate(&self, table: &str) -> Result<u64> {
        self.truncate_rows(table).await
    }
}
