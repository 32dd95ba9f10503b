//! In-place mutation of DTables: `UPDATE`, `DELETE`, `TRUNCATE`, column changes.
//!
//! Every mutation runs as tasks on the workers that own the chunks, through the engine's
//! datadeps, in two phases:
//! 1. **Prepare** (read-only): per chunk, a task evaluates the statement (the rows a `WHERE`
//!    picks, the new values; or the rows a `DELETE` keeps; or a table's new columns). A cast
//!    error or an overflow anywhere fails here, before anything has changed: the statement's
//!    outputs are freed and the table is as it was.
//! 2. **Commit**: an `UPDATE` spawns, per chunk with matching rows, a task with `ReadWrite`
//!    access on the chunk that writes the prepared values into it. The engine orders it after
//!    every earlier reader (write-after-read), so a query submitted before sees the old values;
//!    a fixed-width column whose buffer the chunk holds alone is written in place, one that is
//!    shared (a reader still holds it) is copied first. The writes of one statement land all
//!    or none (`commit`): each checks what can fail before it changes its chunk and returns
//!    the values it overwrote, and when one fails, or the statement is dropped while they
//!    run, all are undone with those. Other mutations swap the catalog entry to the prepared
//!    chunks; the old ones are freed once their readers are done.
//!
//! Statements that change tables take the session's mutation lock, so they run one at a time;
//! queries take their table snapshot and submit their tasks under the catalog lock, so each
//! query sees the state between two statements (serializable).

mod change_query;
pub(crate) mod commit;
pub(crate) mod inplace;
pub(crate) mod rowchange;

use crate::core::SessionCore;
use crate::error::{DirkError, Result};
use crate::kernels::fragment::{encode_plan, encode_with_header};
use crate::kernels::mutation::Step;
use crate::table::DTable;
use arrow::datatypes::{Field, Schema};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, WriteOp};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast;
use dirk_engine::ChunkRef;
use std::collections::HashMap;
use std::sync::Arc;

/// A mutation plan over `schema`: projection `exprs` (if any) over a filter (if any).
fn mutation_plan(
    core: &SessionCore,
    schema: &DFSchema,
    predicate: Option<Expr>,
    exprs: Vec<(Expr, String)>,
) -> Result<Vec<u8>> {
    let state = core.planner_state();
    let mut plan: Arc<dyn ExecutionPlan> =
        Arc::new(EmptyExec::new(Arc::new(schema.as_arrow().clone())));
    if let Some(p) = predicate {
        plan = Arc::new(FilterExec::try_new(
            state.create_physical_expr(p, schema)?,
            plan,
        )?);
    }
    if !exprs.is_empty() {
        let physical = exprs
            .into_iter()
            .map(|(e, name)| Ok((state.create_physical_expr(e, schema)?, name)))
            .collect::<Result<Vec<_>>>()?;
        plan = Arc::new(ProjectionExec::try_new(physical, plan)?);
    }
    Ok(encode_plan(&plan)?)
}

/// Runs `step` once per chunk of `table` (each task reads its chunk, on the chunk's worker)
/// and waits for all. On any failure the outputs are freed and the first error returned.
async fn per_chunk(
    core: &SessionCore,
    table: &DTable,
    step: &Step,
    plan: &[u8],
) -> Result<Vec<(ChunkRef, Option<ChunkRef>)>> {
    let params = encode_with_header(step, plan);
    let label = format!("{step:?}");
    let done = core.each_chunk(table, &label, |_| params.clone()).await?;
    Ok(done
        .into_iter()
        .map(|(c, outs)| (c, outs.into_iter().next()))
        .collect())
}

/// The chunks of `table` a statement with `predicate` must visit, as one partition: all of
/// them, less those their statistics rule out.
async fn candidates(
    core: &SessionCore,
    table: &DTable,
    schema: &DFSchema,
    predicate: Option<&Expr>,
) -> Result<DTable> {
    let chunks = match predicate {
        Some(p) => {
            core.chunk_stats()
                .chunks_maybe_matching(&core.planner_state(), table, schema, p)
                .await?
        }
        None => table.chunks().cloned().collect(),
    };
    Ok(DTable::new(table.schema().clone(), vec![chunks]))
}

/// `UPDATE name SET columns[k] = exprs[k] WHERE predicate`: the expressions are over
/// `schema` (the table's columns, qualified as the statement names them). Returns the
/// number of rows updated.
pub(crate) async fn update_rows(
    core: &SessionCore,
    name: &str,
    schema: &DFSchema,
    predicate: Option<Expr>,
    assignments: Vec<(usize, Expr)>,
) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(name)?;
    if assignments.is_empty() {
        return Ok(0);
    }
    let columns: Vec<usize> = assignments.iter().map(|(c, _)| *c).collect();
    let table = match table.hash_keys() {
        // New key values would hash elsewhere; the rows stay where they are, so the table's
        // partitioning is no longer known. Dropped before any row changes.
        Some(keys)
            if columns
                .iter()
                .any(|&c| keys.contains(table.schema().field(c).name())) =>
        {
            let plain = table.without_hash_keys();
            core.register_replacing(name, plain.clone())?;
            plain
        }
        _ => table,
    };
    let exprs = assignments
        .into_iter()
        .map(|(c, e)| (e, table.schema().field(c).name().clone()))
        .collect();
    let candidates = candidates(core, &table, schema, predicate.as_ref()).await?;
    let plan = mutation_plan(core, schema, predicate, exprs)?;
    let step = Step::UpdatePrepare {
        columns: columns.clone(),
    };
    let prepared = per_chunk(core, &candidates, &step, &plan).await?;
    let pending: Vec<(ChunkRef, ChunkRef)> = prepared
        .into_iter()
        .filter_map(|(c, p)| Some((c, p?)))
        .collect();
    let rows = pending.iter().map(|(_, p)| p.rows).sum();
    // Bounds are forgotten before any write is sent, so a write that lands after this statement
    // failed or was dropped leaves no old bounds to prune a chunk that now matches; and again
    // once the writes are done, for bounds a concurrent query computed while they ran.
    core.chunk_stats()
        .forget_stats(pending.iter().map(|(t, _)| t.id), &columns);
    let writes = core.with_catalog_locked(|| {
        commit::InPlaceWrites::spawn(
            &core.engine,
            &columns,
            pending
                .iter()
                .map(|(target, values)| (target, std::slice::from_ref(values))),
        )
    });
    let values = pending.iter().map(|(_, v)| v.clone()).collect();
    let done = writes.then_free(values).finish().await;
    core.chunk_stats()
        .forget_stats(pending.iter().map(|(t, _)| t.id), &columns);
    done.map(|()| rows)
}

/// `DELETE FROM name WHERE predicate` (over `schema`); without a predicate, every row.
/// Returns the number of rows deleted.
pub(crate) async fn delete_rows(
    core: &SessionCore,
    name: &str,
    schema: &DFSchema,
    predicate: Option<Expr>,
) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(name)?;
    let Some(predicate) = predicate else {
        return truncate_locked(core, name, table);
    };
    let candidates = candidates(core, &table, schema, Some(&predicate)).await?;
    let plan = mutation_plan(core, schema, Some(predicate), Vec::new())?;
    let kept = per_chunk(core, &candidates, &Step::Delete, &plan).await?;
    let mut deleted = 0;
    let mut empty = Vec::new();
    let replaced: HashMap<_, _> = kept
        .into_iter()
        .filter_map(|(old, new)| {
            let new = new?;
            deleted += old.rows - new.rows;
            if new.rows == 0 {
                empty.push(new);
                return Some((old.id, None));
            }
            core.chunk_stats().inherit_stats(old.id, new.id, &[]);
            Some((old.id, Some(new)))
        })
        .collect();
    core.engine().free(&empty)?;
    if deleted == 0 {
        return Ok(0);
    }
    let partitions = table
        .partitions()
        .iter()
        .map(|p| {
            p.iter()
                .filter_map(|c| match replaced.get(&c.id) {
                    Some(new) => new.clone(),
                    None => Some(c.clone()),
                })
                .collect()
        })
        .collect();
    core.register_replacing(name, table.with_subsets(partitions))?;
    Ok(deleted)
}

/// `TRUNCATE name`: every row goes; the table keeps its schema and partition count.
pub(crate) async fn truncate_rows(core: &SessionCore, name: &str) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(name)?;
    truncate_locked(core, name, table)
}

fn truncate_locked(core: &SessionCore, name: &str, table: DTable) -> Result<u64> {
    let rows = table.num_rows();
    let partitions = vec![Vec::new(); table.num_partitions()];
    core.register_replacing(name, table.with_subsets(partitions))?;
    Ok(rows)
}

/// Replaces the table's columns by `exprs` (over `schema`), evaluated chunk by chunk where
/// the chunks live: what `ADD COLUMN` and `DROP COLUMN` do. Columns passed through as they
/// are share their buffers with the old chunks: nothing is copied.
pub(crate) async fn project_columns(
    core: &SessionCore,
    name: &str,
    schema: &DFSchema,
    exprs: Vec<(Expr, String)>,
    nullable: Vec<bool>,
) -> Result<()> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(name)?;
    let plan = mutation_plan(core, schema, None, exprs)?;
    let computed =
        crate::kernels::fragment::decode_fragment(&plan, &core.planner().task_ctx())?.schema();
    let fields: Vec<Field> = computed
        .fields()
        .iter()
        .zip(&nullable)
        .map(|(f, n)| f.as_ref().clone().with_nullable(f.is_nullable() || *n))
        .collect();
    let new_schema = Arc::new(Schema::new(fields));
    let step = Step::Project { nullable };
    let projected = per_chunk(core, &table, &step, &plan).await?;
    let replaced: HashMap<_, _> = projected
        .into_iter()
        .filter_map(|(old, new)| Some((old.id, new?)))
        .collect();
    let partitions = table
        .partitions()
        .iter()
        .map(|p| {
            p.iter()
                .filter_map(|c| replaced.get(&c.id).cloned())
                .collect()
        })
        .collect();
    core.register_replacing(name, DTable::new(new_schema, partitions))?;
    Ok(())
}

/// Adds column `column` = `value` (over `schema`); the existing columns keep their buffers.
/// `nullable` makes the new column nullable even where `value` is not (a literal default).
pub(crate) async fn add_column(
    core: &SessionCore,
    table: &str,
    schema: &DFSchema,
    value: Expr,
    column: String,
    nullable: bool,
) -> Result<()> {
    let mut exprs = as_they_are(schema);
    exprs.push((value, column));
    let mut flags = vec![false; exprs.len()];
    *flags.last_mut().expect("the new column") = nullable;
    project_columns(core, table, schema, exprs, flags).await
}

/// Renames a column: only the catalog changes (chunks are read by position).
pub(crate) async fn rename_column_in(
    core: &SessionCore,
    name: &str,
    from: &str,
    to: &str,
) -> Result<()> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(name)?;
    let schema = table.schema();
    let i = schema.index_of(from)?;
    if schema.index_of(to).is_ok() {
        return Err(DirkError::SchemaMismatch {
            detail: format!("table `{name}` already has a column `{to}`"),
        });
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(j, f)| {
            let f = f.as_ref().clone();
            if j == i {
                f.with_name(to)
            } else {
                f
            }
        })
        .collect();
    let new_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let partitions = table.partitions().to_vec();
    core.register_replacing(name, DTable::new(new_schema, partitions))
}

/// Renames a table: only the catalog changes.
pub(crate) async fn rename_table_to(core: &SessionCore, from: &str, to: &str) -> Result<()> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(from)?;
    if core.table(to).is_ok() {
        return Err(DirkError::TableExists { name: to.into() });
    }
    core.register_moved(from, to, table)
}

/// Every column of `schema` as it is, under its own name: the start of a projection that adds
/// or drops columns (pass-through columns share their buffers).
pub(crate) fn as_they_are(schema: &DFSchema) -> Vec<(Expr, String)> {
    schema
        .columns()
        .into_iter()
        .map(|c| {
            let n = c.name.clone();
            (Expr::Column(c), n)
        })
        .collect()
}

/// True when `e` holds a subquery (which a per-chunk expression cannot evaluate).
fn has_subquery(e: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// The target table's own scan in a DML input (possibly under its alias); `None` when the
/// input reads more than the target (a join with `FROM` tables).
fn target_scan(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::TableScan(_) => Some(plan),
        LogicalPlan::SubqueryAlias(a) if matches!(a.input.as_ref(), LogicalPlan::TableScan(_)) => {
            Some(plan)
        }
        _ => None,
    }
}

/// An identifier as DataFusion names it: unquoted ones are lower-cased.
fn ident_name(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

pub(crate) fn object_name(n: &ast::ObjectName) -> Result<String> {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| DirkError::Unsupported {
            what: format!("table name {n}"),
        })
}

fn unsupported(what: impl Into<String>) -> DirkError {
    DirkError::Unsupported { what: what.into() }
}

/// `INSERT INTO name <plan>`: the new rows become new chunks of the table. `INSERT OVERWRITE`
/// replaces every row by the new ones.
pub(crate) async fn insert_plan(
    core: &SessionCore,
    name: &str,
    input: LogicalPlan,
    op: InsertOp,
) -> Result<u64> {
    let _one_at_a_time = core.mutation_lock().lock().await;
    let mut table = core.table(name)?;
    match op {
        InsertOp::Append => {}
        InsertOp::Overwrite => {
            let partitions = vec![Vec::new(); table.num_partitions()];
            table = table.with_subsets(partitions);
        }
        InsertOp::Replace => {
            return Err(DirkError::Unsupported {
                what: "REPLACE INTO (a table has no key to replace rows by)".into(),
            })
        }
    }
    let new = core.run_plan(input).await?;
    let rows = new.num_rows();
    table.append(new)?;
    core.register_replacing(name, table)?;
    Ok(rows)
}

/// An `UPDATE` or `DELETE` that reads only its target's rows, each row on its own (no join, no
/// subquery): it runs chunk by chunk where the chunks live.
#[derive(Debug)]
pub(crate) struct Chunkwise {
    table: String,
    /// The target's columns, qualified as the statement names them.
    schema: DFSchemaRef,
    predicate: Option<Expr>,
    /// For an `UPDATE`: each assigned column and its new value, cast to the column's type.
    assignments: Option<Vec<(usize, Expr)>>,
}

impl Chunkwise {
    /// `plan` (an `UPDATE` or `DELETE` as DataFusion plans it) as a chunkwise change, or `None`
    /// when it reads more than its target's rows one by one.
    ///
    /// DataFusion plans `UPDATE` as a projection of every column (assigned ones replaced by
    /// their new value) over the `WHERE` filter over the scan, and `DELETE` as the filter over
    /// the scan.
    pub(crate) fn of(plan: &LogicalPlan) -> Option<Chunkwise> {
        let LogicalPlan::Dml(dml) = plan else {
            return None;
        };
        let (projection, filtered) = match (&dml.op, dml.input.as_ref()) {
            (WriteOp::Update, LogicalPlan::Projection(p)) => (Some(p), p.input.as_ref()),
            (WriteOp::Delete, input) => (None, input),
            _ => return None,
        };
        let (predicate, source) = match filtered {
            LogicalPlan::Filter(f) => (Some(f.predicate.clone()), f.input.as_ref()),
            other => (None, other),
        };
        let source = target_scan(source)?;
        let schema = Arc::clone(source.schema());
        let assignments = match projection {
            None => None,
            Some(p) => {
                let mut assignments = Vec::new();
                for (i, e) in p.expr.iter().enumerate() {
                    let e = e.clone().unalias();
                    if let Expr::Column(c) = &e {
                        if schema.index_of_column(c).ok() == Some(i) {
                            continue;
                        }
                    }
                    assignments.push((i, e));
                }
                Some(assignments)
            }
        };
        let reads_other_tables = predicate
            .iter()
            .chain(assignments.iter().flatten().map(|(_, e)| e))
            .any(has_subquery);
        if reads_other_tables {
            return None;
        }
        Some(Chunkwise {
            table: dml.table_name.table().to_string(),
            schema,
            predicate,
            assignments,
        })
    }
}

/// Runs a [`Chunkwise`] change; returns the rows it changed.
pub(crate) async fn run_chunkwise(core: &SessionCore, change: Chunkwise) -> Result<u64> {
    let Chunkwise {
        table,
        schema,
        predicate,
        assignments,
    } = change;
    match assignments {
        Some(assignments) => update_rows(core, &table, &schema, predicate, assignments).await,
        None => delete_rows(core, &table, &schema, predicate).await,
    }
}

/// `ALTER TABLE`: `ADD [COLUMN]`, `DROP [COLUMN]`, `RENAME [COLUMN]`, `RENAME TO`. Returns
/// the rows whose shape changed (every row for `ADD`/`DROP`; none for renames).
pub(crate) async fn alter_table(core: &SessionCore, alter: &ast::AlterTable) -> Result<u64> {
    let mut name = object_name(&alter.name)?;
    if core.table(&name).is_err() {
        if alter.if_exists {
            return Ok(0);
        }
        return Err(DirkError::TableNotFound { name });
    }
    let mut rows = 0;
    for op in &alter.operations {
        match op {
            ast::AlterTableOperation::AddColumn {
                if_not_exists,
                column_def,
                ..
            } => {
                let column = ident_name(&column_def.name);
                let table = core.table(&name)?;
                if table.schema().index_of(&column).is_ok() {
                    if *if_not_exists {
                        continue;
                    }
                    return Err(DirkError::SchemaMismatch {
                        detail: format!("table `{name}` already has a column `{column}`"),
                    });
                }
                let mut default = None;
                let mut not_null = false;
                for o in &column_def.options {
                    match &o.option {
                        ast::ColumnOption::Default(e) => default = Some(e.to_string()),
                        ast::ColumnOption::NotNull => not_null = true,
                        ast::ColumnOption::Null => {}
                        other => {
                            return Err(unsupported(format!("ADD COLUMN ... {other}")));
                        }
                    }
                }
                if not_null && default.is_none() && table.num_rows() > 0 {
                    return Err(DirkError::SchemaMismatch {
                        detail: format!(
                            "column `{column}` is NOT NULL and has no DEFAULT for the \
                             table's {} rows",
                            table.num_rows()
                        ),
                    });
                }
                // DataFusion turns the SQL type and the default into an expression.
                let sql = format!(
                    "SELECT CAST({} AS {})",
                    default.as_deref().unwrap_or("NULL"),
                    column_def.data_type
                );
                let plan = core.planner_state().create_logical_plan(&sql).await?;
                let LogicalPlan::Projection(p) = plan else {
                    return Err(unsupported(format!("default {sql}")));
                };
                let value = p.expr[0].clone().unalias();
                let schema = DFSchema::try_from_qualified_schema(name.as_str(), table.schema())?;
                add_column(core, &name, &schema, value, column, !not_null).await?;
                rows = rows.max(table.num_rows());
            }
            ast::AlterTableOperation::DropColumn {
                column_names,
                if_exists,
                ..
            } => {
                let table = core.table(&name)?;
                let mut gone = Vec::new();
                for c in column_names {
                    let c = ident_name(c);
                    if table.schema().index_of(&c).is_err() {
                        if *if_exists {
                            continue;
                        }
                        return Err(DirkError::SchemaMismatch {
                            detail: format!("table `{name}` has no column `{c}`"),
                        });
                    }
                    gone.push(c);
                }
                let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
                rows = rows.max(inplace::drop_columns(core, &name, &refs).await?);
            }
            ast::AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                rename_column_in(
                    core,
                    &name,
                    &ident_name(old_column_name),
                    &ident_name(new_column_name),
                )
                .await?;
            }
            ast::AlterTableOperation::RenameTable { table_name } => {
                let to = match table_name {
                    ast::RenameTableNameKind::As(n) | ast::RenameTableNameKind::To(n) => {
                        object_name(n)?
                    }
                };
                rename_table_to(core, &name, &to).await?;
                name = to;
            }
            other => return Err(unsupported(format!("ALTER TABLE ... {other}"))),
        }
    }
    Ok(rows)
}
