//! Row-targeted changes: `MERGE INTO`, `UPDATE ... FROM`, and `UPDATE`/`DELETE` whose
//! `WHERE` reads other tables (a subquery, `DELETE ... USING`).
//!
//! Such a statement cannot be evaluated chunk by chunk: which target rows change, and to what,
//! depends on a join. Dirk runs it as a query and then writes the answer back where the rows
//! live:
//! 1. **Tag** (read-only, one task per target chunk, on its worker): the chunk plus three columns
//!    naming each row (chunk, batch, row), sharing the chunk's buffers. The tagged chunks form a
//!    temporary DTable.
//! 2. **Query**: one `SELECT` over the tagged table and the statement's other tables, planned and
//!    run like any query (stages, tasks, shuffles). Each output row names a target row (or none,
//!    for a `MERGE` insert), the action (update, delete, insert) and the values.
//! 3. **Route** (one task per output chunk): splits its rows by target chunk.
//! 4. **Prepare** (read-only): per target chunk, checks that no row is changed twice; a chunk
//!    that loses rows is rewritten into a new chunk (updates applied by copy).
//! 5. **Commit**: chunks that only change values get `ReadWrite` apply tasks (in place, as a
//!    plain `UPDATE` does); rewritten and inserted chunks replace the catalog entry in the same
//!    catalog-locked step, so a query sees all of the statement or none of it.
//!
//! Every failure before the commit (a cast error, a row changed twice, a join that cannot be
//! planned) frees what was made and leaves the table as it was.

use crate::core::SessionCore;
use crate::dml::change_query::{self, ChangeQuery, Target};
use crate::dml::commit::InPlaceWrites;
use crate::error::{DirkError, Result};
use crate::kernels::mutation::{Step, MUTATE_KERNEL};
use crate::kernels::rowchange::TAG_COLUMNS;
use crate::table::DTable;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use dirk_engine::{Arg, ChunkRef, TaskOptions};
use std::collections::HashMap;
use std::sync::Arc;

fn unsupported(what: impl Into<String>) -> DirkError {
    DirkError::Unsupported { what: what.into() }
}

/// Which statement a change query comes from.
pub(crate) enum ChangeStatement<'a> {
    Merge(&'a ast::Merge),
    Update(&'a ast::Update),
    Delete(&'a ast::Delete),
}

impl ChangeStatement<'_> {
    /// The change `statement` makes; an error for other statements.
    pub(crate) fn of(statement: &ast::Statement) -> Result<ChangeStatement<'_>> {
        match statement {
            ast::Statement::Merge(m) => Ok(ChangeStatement::Merge(m)),
            ast::Statement::Update(u) => Ok(ChangeStatement::Update(u)),
            ast::Statement::Delete(d) => Ok(ChangeStatement::Delete(d)),
            other => Err(unsupported(format!("{other} as a change of rows"))),
        }
    }

    fn target(&self) -> Result<String> {
        let factor = match self {
            ChangeStatement::Merge(m) => &m.table,
            ChangeStatement::Update(u) => &u.table.relation,
            ChangeStatement::Delete(d) => {
                let (ast::FromTable::WithFromKeyword(f) | ast::FromTable::WithoutKeyword(f)) =
                    &d.from;
                match f.first() {
                    Some(t) => &t.relation,
                    None => return Err(unsupported("DELETE without a table")),
                }
            }
        };
        Ok(Target::of(factor)?.table)
    }

    fn query(&self, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
        match self {
            ChangeStatement::Merge(m) => change_query::merge_query(m, tagged, schema),
            ChangeStatement::Update(u) => change_query::update_query(u, tagged, schema),
            ChangeStatement::Delete(d) => change_query::delete_query(d, tagged),
        }
    }
}

/// Runs a row-targeted change (see the module docs); returns the rows it changed.
pub(crate) async fn change_rows(core: &SessionCore, statement: ChangeStatement<'_>) -> Result<u64> {
    let name = statement.target()?;
    let _one_at_a_time = core.mutation_lock().lock().await;
    let table = core.table(&name)?;
    let targets: Vec<ChunkRef> = table.chunks().cloned().collect();
    let position: HashMap<_, u32> = targets
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, i as u32))
        .collect();

    // 1. Tag.
    let tagged = core
        .each_chunk(&table, "Tag", |c| {
            crate::kernels::fragment::encode_with_header(
                &Step::Tag {
                    chunk: position[&c.id],
                },
                &[],
            )
        })
        .await?;
    let mut tagged_parts = Vec::with_capacity(table.num_partitions());
    let mut by_id: HashMap<_, ChunkRef> = tagged
        .into_iter()
        .filter_map(|(c, o)| Some((c.id, o.into_iter().next()?)))
        .collect();
    for p in table.partitions() {
        tagged_parts.push(p.iter().filter_map(|c| by_id.remove(&c.id)).collect());
    }
    let mut fields: Vec<Arc<Field>> = table.schema().fields().iter().cloned().collect();
    fields.extend(
        TAG_COLUMNS
            .iter()
            .map(|n| Arc::new(Field::new(*n, DataType::UInt32, false))),
    );
    let tagged_table = DTable::new(Arc::new(Schema::new(fields)), tagged_parts);
    let tagged_name = core.register_temp("rows", tagged_table)?;

    // 2. Query.
    let answer = async {
        let query = statement.query(&tagged_name, table.schema())?;
        let statement = ast::Statement::Query(Box::new(query.query.clone()));
        let plan = core
            .planner_state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        Ok::<_, DirkError>((core.run_plan(plan).await?, query))
    }
    .await;
    core.drop_temp(&tagged_name)?;
    let (answer, query) = answer?;

    // 3. Route.
    let route = Step::Route {
        targets: targets.len(),
        target: (**table.schema()).clone(),
        columns: query.columns.clone(),
        updated: query.updated.clone(),
    };
    let params = crate::kernels::fragment::encode_with_header(&route, &[]);
    let routed = core.each_chunk(&answer, "Route", |_| params.clone()).await;
    core.engine()
        .free(&answer.chunks().cloned().collect::<Vec<_>>())?;
    let routed = routed?;
    let k = targets.len();
    let mut updates: Vec<Vec<ChunkRef>> = vec![Vec::new(); k];
    let mut deletes: Vec<Vec<ChunkRef>> = vec![Vec::new(); k];
    let mut inserted = Vec::new();
    let mut empty = Vec::new();
    for (_, outs) in routed {
        for (i, c) in outs.into_iter().enumerate() {
            if c.rows == 0 {
                empty.push(c);
            } else if i < k {
                updates[i].push(c);
            } else if i < 2 * k {
                deletes[i - k].push(c);
            } else {
                inserted.push(c);
            }
        }
    }
    core.engine().free(&empty)?;
    let pending: Vec<ChunkRef> = updates
        .iter()
        .chain(&deletes)
        .flatten()
        .chain(&inserted)
        .cloned()
        .collect();
    let result = commit_changes(
        core, &name, &table, &targets, &updates, &deletes, &inserted, &query,
    )
    .await;
    // Inserted chunks the table now holds are its own (a failed write is undone after the
    // catalog entry that holds them was published); the rest was scratch.
    let held: std::collections::HashSet<_> = core
        .table(&name)
        .map(|t| t.chunks().map(|c| c.id).collect())
        .unwrap_or_default();
    let scratch: Vec<ChunkRef> = pending
        .into_iter()
        .filter(|c| !held.contains(&c.id))
        .collect();
    core.engine().free(&scratch)?;
    result
}

/// Steps 4 and 5: prepare every target chunk, then commit all of them at once.
#[allow(clippy::too_many_arguments)]
async fn commit_changes(
    core: &SessionCore,
    name: &str,
    table: &DTable,
    targets: &[ChunkRef],
    updates: &[Vec<ChunkRef>],
    deletes: &[Vec<ChunkRef>],
    inserted: &[ChunkRef],
    query: &ChangeQuery,
) -> Result<u64> {
    let update_columns: Vec<usize> = query.updated.iter().map(|&j| query.columns[j]).collect();
    // 4. Prepare.
    let mut checks = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        if updates[i].is_empty() && deletes[i].is_empty() {
            continue;
        }
        let rewriting = !deletes[i].is_empty();
        let step = if rewriting {
            Step::Rewrite {
                columns: update_columns.clone(),
                updates: updates[i].len(),
                dedupe_deletes: query.dedupe_deletes,
            }
        } else {
            Step::Verify {
                updates: updates[i].len(),
            }
        };
        let mut args = Vec::new();
        if rewriting {
            args.push(Arg::read(target));
        }
        args.extend(updates[i].iter().chain(&deletes[i]).map(Arg::read));
        let opts = TaskOptions::new()
            .params(crate::kernels::fragment::encode_with_header(&step, &[]))
            .label(if rewriting { "Rewrite" } else { "Verify" });
        checks.push((i, core.engine().spawn(MUTATE_KERNEL, args, opts)));
    }
    let mut rewritten: HashMap<_, ChunkRef> = HashMap::new();
    let mut failure = None;
    for (i, h) in checks {
        match h.join().await {
            Ok(out) => {
                if let Some(c) = out.chunks.into_iter().next() {
                    core.chunk_stats()
                        .inherit_stats(targets[i].id, c.id, &update_columns);
                    rewritten.insert(targets[i].id, c);
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        core.engine()
            .free(&rewritten.into_values().collect::<Vec<_>>())?;
        return Err(e.into());
    }
    let mut changed: u64 = updates.iter().flatten().map(|c| c.rows).sum();
    for t in targets {
        if let Some(new) = rewritten.get(&t.id) {
            changed += t.rows - new.rows;
        }
    }
    changed += inserted.iter().map(|c| c.rows).sum::<u64>();

    // 5. Commit: apply tasks and the new catalog entry under one catalog lock.
    let spawn_applies = || {
        InPlaceWrites::spawn(
            &core.engine,
            &update_columns,
            targets
                .iter()
                .enumerate()
                .filter(|(i, t)| !updates[*i].is_empty() && !rewritten.contains_key(&t.id))
                .map(|(i, t)| (t, updates[i].as_slice())),
        )
    };
    core.chunk_stats().forget_stats(
        targets
            .iter()
            .enumerate()
            .filter(|(i, _)| !updates[*i].is_empty())
            .map(|(_, t)| t.id),
        &update_columns,
    );
    let writes = if rewritten.is_empty() && inserted.is_empty() {
        core.with_catalog_locked(spawn_applies)
    } else {
        let partitions = table
            .partitions()
            .iter()
            .map(|p| {
                p.iter()
                    .filter_map(|c| match rewritten.get(&c.id) {
                        Some(new) if new.rows == 0 => None,
                        Some(new) => Some(new.clone()),
                        None => Some(c.clone()),
                    })
                    .collect()
            })
            .collect();
        let mut new_table = DTable::new(table.schema().clone(), partitions);
        let added = DTable::new(
            table.schema().clone(),
            inserted.iter().map(|c| vec![c.clone()]).collect(),
        );
        new_table.append(added)?;
        let emptied: Vec<ChunkRef> = rewritten
            .values()
            .filter(|c| c.rows == 0)
            .cloned()
            .collect();
        // The old version stays whole until the writes are done: it is put back if one fails
        // or the statement is dropped first.
        let (writes, old) = core.replace_holding(name, new_table, spawn_applies);
        let mut put_back = PutBack { core, name, old };
        let done = writes.finish().await;
        if done.is_ok() {
            if let Some(old) = put_back.old.take() {
                core.release_replaced(name, &old)?;
            }
        }
        drop(put_back);
        core.engine().free(&emptied)?;
        return done.map(|()| changed);
    };
    writes.finish().await?;
    Ok(changed)
}

/// A table's version before a statement, put back into the catalog when dropped still holding
/// it (the statement failed or was dropped); its chunks were held, not freed, meanwhile.
struct PutBack<'a> {
    core: &'a SessionCore,
    name: &'a str,
    old: Option<DTable>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            // Fails only if the engine is gone, and then so is the table.
            let _ = self.core.register_replacing(self.name, old);
        }
    }
}
