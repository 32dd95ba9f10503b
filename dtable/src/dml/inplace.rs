//! The DataFrames.jl-style in-place operators behind `Session::update`, `delete_where`,
//! `append`, `with_column_inplace`, `drop_columns` and `sort_inplace`. Each runs as tasks on
//! the workers that own the table's chunks, like the SQL statements, and returns the number of
//! rows it changed.

use crate::core::SessionCore;
use crate::dml::{add_column, as_they_are, delete_rows, project_columns, update_rows};
use crate::error::{DirkError, Result};
use crate::kernels::fragment::encode_with_header;
use crate::kernels::mutation::Step;
use crate::table::DTable;
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};
use dirk_engine::ChunkRef;

fn df_schema_of(core: &SessionCore, name: &str) -> Result<(DTable, DFSchema)> {
    let table = core.table(name)?;
    let schema = DFSchema::try_from_qualified_schema(name, table.schema())?;
    Ok((table, schema))
}

/// Sets `assignments` (column, new value) on the rows where `predicate` is true, in place.
/// Returns the number of rows updated.
pub(crate) async fn update(
    core: &SessionCore,
    table: &str,
    predicate: Expr,
    assignments: Vec<(&str, Expr)>,
) -> Result<u64> {
    let (t, schema) = df_schema_of(core, table)?;
    let mut typed = Vec::with_capacity(assignments.len());
    for (column, value) in assignments {
        let i = t.schema().index_of(column)?;
        typed.push((i, value.cast_to(t.schema().field(i).data_type(), &schema)?));
    }
    update_rows(core, table, &schema, Some(predicate), typed).await
}

/// Deletes the rows where `predicate` is true. Returns the number of rows deleted.
pub(crate) async fn delete_where(core: &SessionCore, table: &str, predicate: Expr) -> Result<u64> {
    let (_, schema) = df_schema_of(core, table)?;
    delete_rows(core, table, &schema, Some(predicate)).await
}

/// Appends `batches` (of the table's column types) as new chunks. Returns the rows added.
pub(crate) async fn append(
    core: &SessionCore,
    table: &str,
    batches: Vec<RecordBatch>,
) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let mut t = core.table(table)?;
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
    let new = core.put_batches(schema, batches)?;
    let rows = new.num_rows();
    t.append(new)?;
    core.register_replacing(table, t)?;
    Ok(rows)
}

/// Sets column `name` to `value` on every row: in place when the column exists, as a new
/// column (existing columns untouched) when it does not. Returns the rows changed.
pub(crate) async fn with_column_inplace(
    core: &SessionCore,
    table: &str,
    name: &str,
    value: Expr,
) -> Result<u64> {
    let (t, schema) = df_schema_of(core, table)?;
    if t.schema().index_of(name).is_ok() {
        return update(
            core,
            table,
            datafusion::prelude::lit(true),
            vec![(name, value)],
        )
        .await;
    }
    add_column(core, table, &schema, value, name.to_string(), false).await?;
    Ok(t.num_rows())
}

/// Drops columns; the others keep their buffers. Returns the table's rows.
pub(crate) async fn drop_columns(core: &SessionCore, table: &str, columns: &[&str]) -> Result<u64> {
    let (t, schema) = df_schema_of(core, table)?;
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
    project_columns(core, table, &schema, exprs, nullable).await?;
    Ok(t.num_rows())
}

/// Sorts the table by `by`: the table's rows are replaced by the sorted result, kept in
/// the session's partition count, each partition a consecutive range. Returns the rows.
pub(crate) async fn sort_inplace(
    core: &SessionCore,
    table: &str,
    by: Vec<datafusion::logical_expr::SortExpr>,
) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let t = core.table(table)?;
    let plan = core
        .planner()
        .table(table)
        .await?
        .sort(by)?
        .into_unoptimized_plan();
    let sorted = core.run_plan(plan).await?;
    let ranges = split_ranges(core, sorted, t.num_partitions().max(1)).await?;
    core.register_replacing(table, ranges)?;
    Ok(t.num_rows())
}

/// `table`'s rows in order, cut into `n` partitions of consecutive rows. Each chunk is cut
/// by a task on its own worker; the pieces stay there.
async fn split_ranges(core: &SessionCore, table: DTable, n: usize) -> Result<DTable> {
    let total = table.num_rows();
    let bounds: Vec<u64> = (1..n as u64).map(|p| total * p / n as u64).collect();
    let mut offset = 0;
    let sliced = core
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
    core.engine()
        .free(&table.chunks().cloned().collect::<Vec<_>>())?;
    Ok(DTable::new(table.schema().clone(), partitions))
}
