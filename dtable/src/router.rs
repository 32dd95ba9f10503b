//! The statement router: the one place a SQL statement is parsed and sent where it runs.
//!
//! | statement | runs in |
//! |---|---|
//! | a query | a DataFrame, run by the executor when collected or streamed |
//! | `CREATE TABLE [AS]`, `CREATE EXTERNAL TABLE`, `DROP TABLE` | the catalog; data made by tasks (an external table's stays in its files) |
//! | other DDL (views, schemas, functions) | DataFusion's catalog: no data moves |
//! | `INSERT`, `TRUNCATE`; `UPDATE`/`DELETE` of the target's own rows | `dml`, chunk by chunk |
//! | `INSERT` into an external table | `export`: new files beside its files, all or nothing |
//! | `MERGE`, `UPDATE ... FROM`, `DELETE ... USING`, `UPDATE`/`DELETE` reading other tables | `dml::rowchange` |
//! | `ALTER TABLE` | `dml::alter_table` |
//! | `COPY ... TO` | `export`: the query's tasks write, the driver commits |
//! | `SET`, `RESET`, `PREPARE`, `EXECUTE` | DataFusion, keeping Dirk's pinned options |
//! | `EXPLAIN [ANALYZE]` | the executor's plans |
//!
//! DataFusion plans every statement it can (so a statement it rejects fails with its error);
//! the route is chosen once, from that plan where there is one.

use crate::core::{SessionCore, PINNED_OFF};
use crate::dml::rowchange::ChangeStatement;
use crate::dml::Chunkwise;
use crate::error::{DirkError, Result};
use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::dataframe::DataFrame as DfDataFrame;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, Statement, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use std::sync::Arc;

/// Where a statement runs.
#[derive(Debug)]
pub(crate) enum Route {
    /// `ALTER TABLE`, which DataFusion does not plan.
    Alter(ast::AlterTable),
    /// A change of target rows that a join with other tables picks (see `dml::rowchange`).
    RowChange(Box<ast::Statement>),
    /// An `UPDATE` or `DELETE` of the target's own rows, one chunk at a time.
    Chunkwise(Chunkwise),
    /// Everything else, as DataFusion planned it.
    Plan(LogicalPlan),
}

/// Parses, routes and runs one SQL statement. Queries come back unrun, as a DataFusion
/// DataFrame to execute through the executor; other statements run now and come back as their
/// result (for DML, the row count).
pub(crate) async fn run_sql(core: &SessionCore, sql: &str) -> Result<DfDataFrame> {
    let state = core.planner.state();
    // Tables a statement makes go to the planner's default schema as of now (`SET
    // datafusion.catalog.default_schema` moves it).
    core.catalog.follow(&state)?;
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect)?;
    match route(&state, statement).await? {
        Route::Alter(alter) => count(core, crate::dml::alter_table(core, &alter).await?),
        Route::RowChange(statement) => {
            let change = ChangeStatement::of(&statement)?;
            count(
                core,
                crate::dml::rowchange::change_rows(core, change).await?,
            )
        }
        Route::Chunkwise(change) => count(core, crate::dml::run_chunkwise(core, change).await?),
        Route::Plan(plan) => execute_logical(core, plan).await,
    }
}

/// Chooses where `statement` runs.
pub(crate) async fn route(state: &SessionState, statement: DfStatement) -> Result<Route> {
    if let DfStatement::Statement(s) = &statement {
        match s.as_ref() {
            ast::Statement::AlterTable(alter) => return Ok(Route::Alter(alter.clone())),
            // DataFusion's planner does not take these; they read other tables by definition.
            ast::Statement::Update(u) if u.from.is_some() => {
                return Ok(Route::RowChange(s.clone()))
            }
            ast::Statement::Delete(d) if d.using.is_some() => {
                return Ok(Route::RowChange(s.clone()))
            }
            _ => {}
        }
    }
    // Kept only for the statements that may take the row-targeted path (a large `INSERT` is
    // not copied for nothing).
    let parsed = match &statement {
        DfStatement::Statement(s)
            if matches!(
                s.as_ref(),
                ast::Statement::Merge(_) | ast::Statement::Update(_) | ast::Statement::Delete(_)
            ) =>
        {
            Some(s.clone())
        }
        _ => None,
    };
    let plan = state.statement_to_plan(statement).await?;
    let row_change = |plan: &LogicalPlan| -> Result<Route> {
        // DataFusion's analyzer checks what its planner does not (condition types, subquery
        // shapes), so a statement it rejects fails with its error before anything runs.
        state.optimize(plan)?;
        let statement = parsed.clone().ok_or_else(|| DirkError::Unsupported {
            what: format!("{} from a plan without its statement", plan.display()),
        })?;
        Ok(Route::RowChange(statement))
    };
    match &plan {
        // DataFusion plans MERGE (checking it) but does not run it on a provider.
        _ if matches!(parsed.as_deref(), Some(ast::Statement::Merge(_))) => row_change(&plan),
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Update | WriteOp::Delete,
            ..
        }) => match Chunkwise::of(&plan) {
            Some(change) => Ok(Route::Chunkwise(change)),
            None => row_change(&plan),
        },
        _ => Ok(Route::Plan(plan)),
    }
}

async fn execute_logical(core: &SessionCore, plan: LogicalPlan) -> Result<DfDataFrame> {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
            let _one_at_a_time = core.mutation_lock.lock().await;
            let name = c.name.table().to_string();
            if core.catalog.contains(&name) && c.if_not_exists {
                return empty(core);
            }
            let table = core.run_plan((*c.input).clone()).await?;
            core.register(&name, table, c.or_replace)?;
            empty(core)
        }
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => {
            let _one_at_a_time = core.mutation_lock.lock().await;
            let name = c.name.table().to_string();
            if core.catalog.contains(&name) {
                if c.if_not_exists {
                    return empty(core);
                }
                if !c.or_replace {
                    return Err(DirkError::TableExists { name });
                }
            }
            let state = core.planner.state();
            let table = crate::ingest::external_table(&state, core.executor.stores(), &c).await?;
            core.catalog.register_external(&name, table, c.or_replace)?;
            empty(core)
        }
        LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
            let _one_at_a_time = core.mutation_lock.lock().await;
            let name = d.name.table().to_string();
            if core.catalog.remove(&name)? {
                return empty(core);
            }
            if core.planner.table_exist(d.name.clone())? {
                // Not a DTable: a provider registered with DataFusion directly.
                core.planner
                    .execute_logical_plan(LogicalPlan::Ddl(DdlStatement::DropTable(d)))
                    .await?;
                return empty(core);
            }
            if !d.if_exists {
                return Err(DirkError::TableNotFound { name });
            }
            empty(core)
        }
        // Views, schemas, catalogs and functions change only the driver's catalog: no data
        // is read or written, so DataFusion's own handling is the right one.
        LogicalPlan::Ddl(other) => {
            core.planner
                .execute_logical_plan(LogicalPlan::Ddl(other))
                .await?;
            empty(core)
        }
        LogicalPlan::Dml(DmlStatement {
            table_name,
            op: WriteOp::Insert(op),
            input,
            ..
        }) => {
            let name = table_name.table();
            let input = (*input).clone();
            let rows = match core.catalog.external(name) {
                Some(files) => {
                    crate::export::insert_files(&core.executor, &files, input, op).await?
                }
                None => crate::dml::insert_plan(core, name, input, op).await?,
            };
            count(core, rows)
        }
        LogicalPlan::Dml(DmlStatement {
            table_name,
            op: WriteOp::Truncate,
            ..
        }) => count(
            core,
            crate::dml::truncate_rows(core, table_name.table()).await?,
        ),
        LogicalPlan::Dml(d) => Err(DirkError::Unsupported {
            what: format!("{} on a DTable here", d.op),
        }),
        LogicalPlan::Copy(copy) => count(core, crate::export::copy_to(&core.executor, copy).await?),
        LogicalPlan::Statement(s) => statement(core, s).await,
        LogicalPlan::Explain(e) => {
            let df = DfDataFrame::new(core.planner.state(), (*e.plan).clone());
            let mut rows = Vec::new();
            if e.verbose {
                rows.extend(datafusion_plans(df.clone()).await?);
            } else {
                let optimized = df.clone().into_optimized_plan()?;
                rows.push((
                    "logical_plan".to_string(),
                    optimized.display_indent().to_string(),
                ));
            }
            rows.push((
                "dirk_stages".to_string(),
                core.executor.explain_plan(df).await?,
            ));
            plan_rows(core, rows)
        }
        LogicalPlan::Analyze(a) => {
            let df = DfDataFrame::new(core.planner.state(), (*a.input).clone());
            let physical = df.create_physical_plan().await?;
            let text = core.executor.explain_analyze(physical).await?;
            plan_rows(core, vec![("Plan with Metrics".to_string(), text)])
        }
        plan => Ok(DfDataFrame::new(core.planner.state(), plan)),
    }
}

/// `SET`, `RESET`, `PREPARE`, `EXECUTE`, transactions: DataFusion's handling, except that the
/// options Dirk keeps off stay off, and an `EXECUTE` runs through Dirk's tasks.
async fn statement(core: &SessionCore, statement: Statement) -> Result<DfDataFrame> {
    if let Statement::SetVariable(set) = &statement {
        let key = set.variable.to_lowercase();
        if PINNED_OFF.contains(&key.as_str()) && !set.value.eq_ignore_ascii_case("false") {
            return Err(DirkError::Unsupported {
                what: format!(
                    "setting {key}: Dirk runs each partition as its own task, and this option \
                     assumes the partitions of a plan share memory"
                ),
            });
        }
    }
    let df = core
        .planner
        .execute_logical_plan(LogicalPlan::Statement(statement))
        .await?;
    let state = core.planner.state_ref();
    let mut state = state.write();
    for key in PINNED_OFF {
        state.config_mut().options_mut().set(key, "false")?;
    }
    drop(state);
    match df.logical_plan() {
        LogicalPlan::EmptyRelation(_) => empty(core),
        _ => Ok(df),
    }
}

/// No rows and no columns: what a statement returns.
fn empty(core: &SessionCore) -> Result<DfDataFrame> {
    let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(false).build()?;
    Ok(DfDataFrame::new(core.planner.state(), plan))
}

/// One row, `count`: what a DML statement returns.
fn count(core: &SessionCore, rows: u64) -> Result<DfDataFrame> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![rows]))])
        .map_err(datafusion::error::DataFusionError::from)?;
    Ok(core.planner.read_batch(batch)?)
}

/// A two-column result (`plan_type`, `plan`), as DataFusion's `EXPLAIN` gives.
fn plan_rows(core: &SessionCore, rows: Vec<(String, String)>) -> Result<DfDataFrame> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    let (types, plans): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(types)),
            Arc::new(StringArray::from(plans)),
        ],
    )
    .map_err(datafusion::error::DataFusionError::from)?;
    Ok(core.planner.read_batch(batch)?)
}

/// DataFusion's own plans for `EXPLAIN VERBOSE`: every logical and physical rewrite. They are
/// text the physical planner records while planning; nothing runs.
async fn datafusion_plans(df: DfDataFrame) -> Result<Vec<(String, String)>> {
    let physical = df.explain(true, false)?.create_physical_plan().await?;
    let explain = physical
        .downcast_ref::<datafusion::physical_plan::explain::ExplainExec>()
        .ok_or_else(|| DirkError::Unsupported {
            what: "EXPLAIN VERBOSE of this statement".into(),
        })?;
    Ok(explain
        .stringified_plans()
        .iter()
        .map(|p| (p.plan_type.to_string(), p.plan.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn route_of(sql: &str) -> Route {
        let ctx = SessionContext::new();
        for t in ["t", "s"] {
            ctx.sql(&format!("CREATE TABLE {t} (a INT, b INT)"))
                .await
                .unwrap();
        }
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).unwrap();
        route(&state, statement).await.unwrap()
    }

    #[tokio::test]
    async fn each_statement_has_one_route() {
        for (sql, expected) in [
            ("SELECT a FROM t", "Plan"),
            ("INSERT INTO t VALUES (1, 2)", "Plan"),
            ("UPDATE t SET a = 1 WHERE b > 2", "Chunkwise"),
            ("UPDATE t SET a = a + b", "Chunkwise"),
            ("DELETE FROM t WHERE b > 2", "Chunkwise"),
            ("DELETE FROM t", "Chunkwise"),
            ("UPDATE t SET a = s.a FROM s WHERE t.b = s.b", "RowChange"),
            (
                "UPDATE t SET a = 1 WHERE b IN (SELECT b FROM s)",
                "RowChange",
            ),
            ("UPDATE t SET a = (SELECT max(a) FROM s)", "RowChange"),
            (
                "DELETE FROM t WHERE EXISTS (SELECT 1 FROM s WHERE s.b = t.b)",
                "RowChange",
            ),
            ("DELETE FROM t USING s WHERE t.a = s.a", "RowChange"),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
                "RowChange",
            ),
            ("ALTER TABLE t ADD COLUMN c INT", "Alter"),
        ] {
            let got = route_of(sql).await;
            let name = match got {
                Route::Alter(_) => "Alter",
                Route::RowChange(_) => "RowChange",
                Route::Chunkwise(_) => "Chunkwise",
                Route::Plan(_) => "Plan",
            };
            assert_eq!(name, expected, "{sql}");
        }
    }
}
