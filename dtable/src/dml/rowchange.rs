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

use crate::dml::object_name;
use crate::error::{DirkError, Result};
use crate::kernels::mutation::{Step, MUTATE_KERNEL};
use crate::kernels::rowchange::{Action, ACTION, TAG_COLUMNS};
use crate::session::Session;
use crate::table::DTable;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::ast;
use dirk_engine::{Arg, ChunkRef, TaskOptions};
use std::collections::HashMap;
use std::fmt::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

/// The query of a row-targeted change and how to read its answer.
#[derive(Debug)]
struct ChangeQuery {
    /// `SELECT` chunk, batch, row, action, then one value column per entry of `columns`.
    sql: String,
    /// The target column each value column is for.
    columns: Vec<usize>,
    /// The value columns (indices into `columns`) an update writes.
    updated: Vec<usize>,
    /// A target row the statement deletes more than once is deleted once (`DELETE ... USING`
    /// may join a row to several others); otherwise a row changed twice is an error.
    dedupe_deletes: bool,
}

/// True when a statement needs the row-targeted path: it reads other tables than its target.
pub(crate) fn reads_other_tables(statement: &ast::Statement) -> bool {
    match statement {
        ast::Statement::Merge(_) => true,
        ast::Statement::Update(u) => u.from.is_some() || has_subquery(statement),
        ast::Statement::Delete(d) => d.using.is_some() || has_subquery(statement),
        _ => false,
    }
}

fn has_subquery(statement: &ast::Statement) -> bool {
    ast::visit_expressions(statement, |e| match e {
        ast::Expr::Subquery(_) | ast::Expr::InSubquery { .. } | ast::Expr::Exists { .. } => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn unsupported(what: impl Into<String>) -> DirkError {
    DirkError::Unsupported { what: what.into() }
}

/// An identifier as SQL text that names exactly `name`.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` cast to the type of target column `field`, as the statement's planner casts
/// assignments (an invalid cast is an error, not a NULL).
fn cast_to(value: &str, field: &Field) -> String {
    let t = field.data_type().to_string().replace('\'', "''");
    format!("arrow_cast({value}, '{t}')")
}

/// The target of a statement: its table name and the name its columns are qualified with.
fn target_of(factor: &ast::TableFactor) -> Result<(String, String)> {
    let ast::TableFactor::Table { name, alias, .. } = factor else {
        return Err(unsupported(format!(
            "changing {factor}: the target must be a table"
        )));
    };
    let table = object_name(name)?;
    let reference = match alias {
        Some(a) => a.name.to_string(),
        None => name
            .0
            .last()
            .map(|p| p.to_string())
            .unwrap_or_else(|| quoted(&table)),
    };
    Ok((table, reference))
}

/// The target column an assignment sets.
fn assigned_column(schema: &Schema, a: &ast::Assignment) -> Result<usize> {
    let ast::AssignmentTarget::ColumnName(name) = &a.target else {
        return Err(unsupported(format!("assigning to a tuple ({})", a.target)));
    };
    let column = object_name(name)?;
    schema
        .index_of(&column)
        .map_err(|_| DirkError::SchemaMismatch {
            detail: format!("the target has no column `{column}`"),
        })
}

/// The `SELECT` list of a change query: the tag columns of `target`, the action, the values.
fn select_list(target: &str, action: &str, values: &[String]) -> String {
    let mut s = String::from("SELECT ");
    for c in TAG_COLUMNS {
        let _ = write!(s, "{target}.{c}, ");
    }
    let _ = write!(s, "{action} AS {ACTION}");
    for (j, v) in values.iter().enumerate() {
        let _ = write!(s, ", {v} AS __dirk_v{j}");
    }
    s
}

fn from_list(tables: &[ast::TableWithJoins]) -> String {
    tables
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `UPDATE t SET ... [FROM ...] WHERE ...` as a change query over `tagged`.
fn update_query(u: &ast::Update, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
    if !u.table.joins.is_empty() {
        return Err(unsupported("UPDATE of a join: name one target table"));
    }
    if u.returning.is_some() || u.limit.is_some() || !u.order_by.is_empty() || u.or.is_some() {
        return Err(unsupported("UPDATE ... RETURNING / ORDER BY / LIMIT / OR"));
    }
    let (_, reference) = target_of(&u.table.relation)?;
    let mut columns = Vec::new();
    let mut values = Vec::new();
    for a in &u.assignments {
        let c = assigned_column(schema, a)?;
        if columns.contains(&c) {
            return Err(unsupported(format!(
                "assigning column `{}` twice",
                schema.field(c).name()
            )));
        }
        columns.push(c);
        values.push(cast_to(&format!("({})", a.value), schema.field(c)));
    }
    let mut sql = select_list(&reference, &(Action::Update as i64).to_string(), &values);
    let _ = write!(sql, " FROM {} AS {reference}", quoted(tagged));
    if let Some(ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) =
        &u.from
    {
        let _ = write!(sql, ", {}", from_list(f));
    }
    if let Some(w) = &u.selection {
        let _ = write!(sql, " WHERE {w}");
    }
    let updated = (0..columns.len()).collect();
    Ok(ChangeQuery {
        sql,
        columns,
        updated,
        dedupe_deletes: false,
    })
}

/// `DELETE FROM t [USING ...] WHERE ...` as a change query over `tagged`.
fn delete_query(d: &ast::Delete, tagged: &str) -> Result<ChangeQuery> {
    let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &d.from;
    if !d.tables.is_empty() || from.len() != 1 || !from[0].joins.is_empty() {
        return Err(unsupported(
            "DELETE from several tables: name one target table",
        ));
    }
    if d.returning.is_some() || d.limit.is_some() || !d.order_by.is_empty() {
        return Err(unsupported("DELETE ... RETURNING / ORDER BY / LIMIT"));
    }
    let (_, reference) = target_of(&from[0].relation)?;
    let mut sql = select_list(&reference, &(Action::Delete as i64).to_string(), &[]);
    let _ = write!(sql, " FROM {} AS {reference}", quoted(tagged));
    if let Some(using) = &d.using {
        let _ = write!(sql, ", {}", from_list(using));
    }
    if let Some(w) = &d.selection {
        let _ = write!(sql, " WHERE {w}");
    }
    Ok(ChangeQuery {
        sql,
        columns: Vec::new(),
        updated: Vec::new(),
        dedupe_deletes: true,
    })
}

/// `MERGE INTO t USING s ON ... WHEN ...` as a change query over `tagged`: one join of the
/// target and the source (inner, left, right or full, as the clauses need), each joined row
/// given the action and values of the first clause whose condition holds.
fn merge_query(m: &ast::Merge, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
    if m.output.is_some() {
        return Err(unsupported("MERGE ... OUTPUT"));
    }
    let (_, target) = target_of(&m.table)?;
    let (source_name, source_alias) = match &m.source {
        ast::TableFactor::Table { name, alias, .. } => (
            name.0.last().map(|p| p.to_string()).unwrap_or_default(),
            alias,
        ),
        ast::TableFactor::Derived { alias, .. } => (String::new(), alias),
        other => return Err(unsupported(format!("MERGE ... USING {other}"))),
    };
    let source = match source_alias {
        Some(a) => a.name.to_string(),
        None if !source_name.is_empty() => source_name,
        None => return Err(unsupported("MERGE ... USING a subquery without an alias")),
    };
    let (mut by_target, mut by_source) = (false, false);
    for c in &m.clauses {
        match c.clause_kind {
            ast::MergeClauseKind::Matched => {}
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                by_target = true
            }
            ast::MergeClauseKind::NotMatchedBySource => by_source = true,
        }
    }
    // Value columns: every target column when rows are inserted, else the assigned ones.
    let mut columns: Vec<usize> = if by_target {
        (0..schema.fields().len()).collect()
    } else {
        Vec::new()
    };
    let mut updated: Vec<usize> = Vec::new();
    // Per clause: its condition, action, and value per target column (by index).
    let mut arms: Vec<(String, Action, HashMap<usize, String>)> = Vec::new();
    let in_source = "__dirk_in_source";
    let target_row = format!("{target}.{} IS NOT NULL", TAG_COLUMNS[0]);
    let source_row = format!("{source}.{in_source} IS NOT NULL");
    // Which side of the join a row has, as the join type leaves it to be asked.
    let matched = match (by_target, by_source) {
        (false, false) => "TRUE".to_string(),
        (true, false) => target_row.clone(),
        (false, true) => source_row.clone(),
        (true, true) => format!("{target_row} AND {source_row}"),
    };
    for c in &m.clauses {
        let category = match c.clause_kind {
            ast::MergeClauseKind::Matched => matched.clone(),
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                format!("NOT ({target_row})")
            }
            ast::MergeClauseKind::NotMatchedBySource => format!("NOT ({source_row})"),
        };
        let condition = match &c.predicate {
            Some(p) => format!("{category} AND ({p})"),
            None => category,
        };
        let inserting = matches!(
            c.clause_kind,
            ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget
        );
        match (&c.action, inserting) {
            (ast::MergeAction::Update(u), false) => {
                if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                    return Err(unsupported("MERGE ... UPDATE ... WHERE / DELETE WHERE"));
                }
                let mut values = HashMap::new();
                for a in &u.assignments {
                    let col = assigned_column(schema, a)?;
                    if values
                        .insert(col, cast_to(&format!("({})", a.value), schema.field(col)))
                        .is_some()
                    {
                        return Err(unsupported(format!(
                            "assigning column `{}` twice",
                            schema.field(col).name()
                        )));
                    }
                    if !columns.contains(&col) {
                        columns.push(col);
                    }
                    let j = columns.iter().position(|x| *x == col).expect("added");
                    if !updated.contains(&j) {
                        updated.push(j);
                    }
                }
                arms.push((condition, Action::Update, values));
            }
            (ast::MergeAction::Delete { .. }, false) => {
                arms.push((condition, Action::Delete, HashMap::new()))
            }
            (ast::MergeAction::Insert(i), true) => {
                if i.insert_predicate.is_some() {
                    return Err(unsupported("MERGE ... INSERT ... WHERE"));
                }
                let ast::MergeInsertKind::Values(v) = &i.kind else {
                    return Err(unsupported("MERGE ... INSERT ROW"));
                };
                let [ast::Parens { content: row, .. }] = v.rows.as_slice() else {
                    return Err(unsupported(
                        "MERGE ... INSERT with other than one VALUES row",
                    ));
                };
                let targets: Vec<usize> = if i.columns.is_empty() {
                    (0..schema.fields().len()).collect()
                } else {
                    i.columns
                        .iter()
                        .map(|n| {
                            let c = object_name(n)?;
                            schema.index_of(&c).map_err(|_| DirkError::SchemaMismatch {
                                detail: format!("the target has no column `{c}`"),
                            })
                        })
                        .collect::<Result<_>>()?
                };
                if targets.len() != row.len() {
                    return Err(DirkError::SchemaMismatch {
                        detail: format!(
                            "MERGE ... INSERT names {} columns and gives {} values",
                            targets.len(),
                            row.len()
                        ),
                    });
                }
                let values = targets
                    .iter()
                    .zip(row)
                    .map(|(&c, e)| (c, cast_to(&format!("({e})"), schema.field(c))))
                    .collect();
                arms.push((condition, Action::Insert, values));
            }
            (action, _) => {
                return Err(DirkError::SchemaMismatch {
                    detail: format!("WHEN {} cannot {action}", c.clause_kind),
                })
            }
        }
    }
    let action_case = {
        let mut s = String::from("CASE");
        for (cond, action, _) in &arms {
            let _ = write!(s, " WHEN {cond} THEN {}", *action as i64);
        }
        s.push_str(" ELSE 0 END");
        s
    };
    let values: Vec<String> = columns
        .iter()
        .map(|&col| {
            let field = schema.field(col);
            let mut s = String::from("CASE");
            for (cond, action, assigned) in &arms {
                let v = match (assigned.get(&col), action) {
                    (Some(v), _) => v.clone(),
                    // An update that does not assign this column writes the value it has.
                    (None, Action::Update) => format!("{target}.{}", quoted(field.name())),
                    (None, _) => cast_to("NULL", field),
                };
                let _ = write!(s, " WHEN {cond} THEN {v}");
            }
            let _ = write!(s, " ELSE {} END", cast_to("NULL", field));
            s
        })
        .collect();
    let join = match (by_target, by_source) {
        (false, false) => "JOIN",
        (false, true) => "LEFT JOIN",
        (true, false) => "RIGHT JOIN",
        (true, true) => "FULL JOIN",
    };
    let mut sql = select_list(&target, &action_case, &values);
    let source_sql = if by_source {
        // A marker that is NULL exactly where a target row found no source row.
        let inner = match &m.source {
            ast::TableFactor::Table { name, alias, .. } => match alias {
                // The alias prints its own `AS` when the statement wrote one.
                Some(a) => format!("{name} {a}"),
                None => name.to_string(),
            },
            other => other.to_string(),
        };
        format!("(SELECT *, TRUE AS {in_source} FROM {inner}) AS {source}")
    } else {
        m.source.to_string()
    };
    let _ = write!(
        sql,
        " FROM {} AS {target} {join} {source_sql} ON {}",
        quoted(tagged),
        m.on
    );
    Ok(ChangeQuery {
        sql,
        columns,
        updated,
        dedupe_deletes: false,
    })
}

/// Which statement a change query comes from.
pub(crate) enum ChangeStatement<'a> {
    Merge(&'a ast::Merge),
    Update(&'a ast::Update),
    Delete(&'a ast::Delete),
}

impl ChangeStatement<'_> {
    /// True when DataFusion can plan the statement (though not run it on a DTable): all but
    /// `UPDATE ... FROM` and `DELETE ... USING`, which its planner does not take.
    pub(crate) fn datafusion_plans_it(&self) -> bool {
        match self {
            ChangeStatement::Merge(_) => true,
            ChangeStatement::Update(u) => u.from.is_none(),
            ChangeStatement::Delete(d) => d.using.is_none(),
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
        Ok(target_of(factor)?.0)
    }

    fn query(&self, tagged: &str, schema: &Schema) -> Result<ChangeQuery> {
        match self {
            ChangeStatement::Merge(m) => merge_query(m, tagged, schema),
            ChangeStatement::Update(u) => update_query(u, tagged, schema),
            ChangeStatement::Delete(d) => delete_query(d, tagged),
        }
    }
}

impl Session {
    /// Runs a row-targeted change (see the module docs); returns the rows it changed.
    pub(crate) async fn change_rows(&self, statement: ChangeStatement<'_>) -> Result<u64> {
        let name = statement.target()?;
        let _one_at_a_time = self.mutation_lock().lock().await;
        let table = self.table(&name)?;
        let targets: Vec<ChunkRef> = table.chunks().cloned().collect();
        let position: HashMap<_, u32> = targets
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i as u32))
            .collect();

        // 1. Tag.
        let tagged = self
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
        let tagged_name = self.register_temp("rows", tagged_table)?;

        // 2. Query.
        let answer = async {
            let query = statement.query(&tagged_name, table.schema())?;
            let plan = self.planner_state().create_logical_plan(&query.sql).await?;
            Ok::<_, DirkError>((self.run_plan(plan).await?, query))
        }
        .await;
        self.drop_temp(&tagged_name)?;
        let (answer, query) = answer?;

        // 3. Route.
        let route = Step::Route {
            targets: targets.len(),
            target: (**table.schema()).clone(),
            columns: query.columns.clone(),
            updated: query.updated.clone(),
        };
        let params = crate::kernels::fragment::encode_with_header(&route, &[]);
        let routed = self.each_chunk(&answer, "Route", |_| params.clone()).await;
        self.engine()
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
        self.engine().free(&empty)?;
        let pending: Vec<ChunkRef> = updates
            .iter()
            .chain(&deletes)
            .flatten()
            .chain(&inserted)
            .cloned()
            .collect();
        let result = self
            .commit_changes(
                &name, &table, &targets, &updates, &deletes, &inserted, &query,
            )
            .await;
        // The inserted chunks now belong to the table (or, on failure, to nobody).
        let scratch: Vec<ChunkRef> = match &result {
            Ok(_) => pending
                .into_iter()
                .filter(|c| !inserted.iter().any(|i| i.id == c.id))
                .collect(),
            Err(_) => pending,
        };
        self.engine().free(&scratch)?;
        result
    }

    /// Steps 4 and 5: prepare every target chunk, then commit all of them at once.
    #[allow(clippy::too_many_arguments)]
    async fn commit_changes(
        &self,
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
            checks.push((i, self.engine().spawn(MUTATE_KERNEL, args, opts)));
        }
        let mut rewritten: HashMap<_, ChunkRef> = HashMap::new();
        let mut failure = None;
        for (i, h) in checks {
            match h.join().await {
                Ok(out) => {
                    if let Some(c) = out.chunks.into_iter().next() {
                        self.chunk_stats()
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
            self.engine()
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
        let apply = crate::kernels::fragment::encode_with_header(
            &Step::UpdateApply {
                columns: update_columns.clone(),
            },
            &[],
        );
        let spawn_applies = || -> Vec<_> {
            targets
                .iter()
                .enumerate()
                .filter(|(i, t)| !updates[*i].is_empty() && !rewritten.contains_key(&t.id))
                .map(|(i, t)| {
                    let mut args = vec![Arg::read_write(t)];
                    args.extend(updates[i].iter().map(Arg::read));
                    self.engine().spawn(
                        MUTATE_KERNEL,
                        args,
                        TaskOptions::new()
                            .params(apply.clone())
                            .label("UpdateApply"),
                    )
                })
                .collect()
        };
        self.chunk_stats().forget_stats(
            targets
                .iter()
                .enumerate()
                .filter(|(i, _)| !updates[*i].is_empty())
                .map(|(_, t)| t.id),
            &update_columns,
        );
        let handles = if rewritten.is_empty() && inserted.is_empty() {
            self.with_catalog_locked(spawn_applies)
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
            let handles = self.register_replacing_with(name, new_table, spawn_applies)?;
            self.engine().free(&emptied)?;
            handles
        };
        let mut failure = None;
        for h in handles {
            if let Err(e) = h.join().await {
                failure.get_or_insert(e);
            }
        }
        match failure {
            // Everything that can fail was checked while preparing; an apply task fails only
            // when the engine does (a lost worker).
            Some(e) => Err(e.into()),
            None => Ok(changed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::{DFParser, Statement};

    fn parse(sql: &str) -> ast::Statement {
        match DFParser::parse_sql(sql).unwrap().pop_front().unwrap() {
            Statement::Statement(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn which_statements_take_the_row_targeted_path() {
        for (sql, expected) in [
            ("UPDATE t SET a = 1 WHERE b > 2", false),
            ("UPDATE t SET a = s.a FROM s WHERE t.b = s.b", true),
            ("UPDATE t SET a = 1 WHERE b IN (SELECT b FROM s)", true),
            ("UPDATE t SET a = (SELECT max(a) FROM s)", true),
            ("DELETE FROM t WHERE b > 2", false),
            (
                "DELETE FROM t WHERE EXISTS (SELECT 1 FROM s WHERE s.b = t.b)",
                true,
            ),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
                true,
            ),
        ] {
            assert_eq!(reads_other_tables(&parse(sql)), expected, "{sql}");
        }
    }
}
