//! # dirk-slt
//!
//! Runs sqllogictest files through a Dirk session: DataFusion's own corpus (shipped in the
//! `datafusion-sqllogictest` crate) and SQLite's `select1`–`select5`. [`DirkDb`] is the
//! [`AsyncDB`] over a Dirk [`Session`]; values are printed with DataFusion's own conversion, so
//! a Dirk answer reads exactly as DataFusion's does; in SQLite's files [`DeclaredTypes`] then
//! converts both engines' values as SQLite's runner does. [`run_file`] runs one file record by record
//! and says, for each record, whether it passed, failed (and how), or was skipped (and why).

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionState;
use datafusion_sqllogictest::{
    convert_batches, convert_schema_to_types, DFColumnType, DFOutput, DFSqlLogicTestError,
    DataFusion, TestContext,
};
use dirk_dtable::{Session, Workers};
use sqllogictest::{
    Condition, Control, DBOutput, MakeConnection, QueryExpect, Record, ResultMode, Runner,
    SortMode, TestErrorKind,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The label DataFusion's runner sets; `skipif`/`onlyif` conditions are judged against it.
pub const LABEL: &str = "Datafusion";

/// A Dirk session as a sqllogictest database.
pub struct DirkDb {
    session: Session,
    spark: bool,
}

impl DirkDb {
    /// A session on `cluster` with `partitions` partitions, whose catalog, functions and
    /// settings start as `state`'s (the test context DataFusion's runner builds for the file).
    pub fn new(
        state: SessionState,
        cluster: &Cluster,
        partitions: usize,
        spark: bool,
    ) -> Result<Self, DFSqlLogicTestError> {
        let mut builder = Session::builder()
            .workers(cluster.workers.clone())
            .partitions(partitions)
            .planner_state(state);
        if let Some(token) = &cluster.token {
            builder = builder.token(token.clone());
        }
        let session = builder.build().map_err(to_slt_error)?;
        Ok(DirkDb { session, spark })
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for DirkDb {
    type Error = DFSqlLogicTestError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DFOutput, Self::Error> {
        use futures::TryStreamExt as _;
        let df = self.session.sql(sql).await.map_err(to_slt_error)?;
        // DataFusion's runner types the columns by the executed plan's schema (after type
        // coercion: `SELECT NULL UNION SELECT 1` is Int64, not Null); so does this one.
        let stream = df.execute_stream().await.map_err(to_slt_error)?;
        let schema = stream.schema();
        let batches: Vec<_> = stream.try_collect().await.map_err(to_slt_error)?;
        let types = convert_schema_to_types(schema.fields());
        let rows = convert_batches(&schema, batches, self.spark)?;
        if rows.is_empty() && types.is_empty() {
            Ok(DBOutput::StatementComplete(0))
        } else {
            Ok(DBOutput::Rows { types, rows })
        }
    }

    fn engine_name(&self) -> &str {
        "Dirk"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn shutdown(&mut self) {}
}

fn to_slt_error(e: dirk_dtable::DirkError) -> DFSqlLogicTestError {
    DFSqlLogicTestError::DataFusion(DataFusionError::from(e))
}

/// The workers a Dirk run's sessions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// In-process workers, or the addresses of `dirk worker` processes.
    pub workers: Workers,
    /// The token the worker processes require.
    pub token: Option<String>,
}

/// Which engine runs a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// Dirk on these workers, with this many partitions.
    Dirk {
        /// Where each file's session runs.
        cluster: Arc<Cluster>,
        /// Partitions per table and exchange.
        partitions: usize,
    },
    /// DataFusion on one node: the reference.
    DataFusion,
}

/// How values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// DataFusion's corpus: DataFusion's validator.
    DataFusion,
    /// SQLite's files: rows compared value by value, as DataFusion's runner does for them.
    Sqlite,
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and matched.
    Pass,
    /// It returned an error where the file expects an answer (or another error).
    Error(String),
    /// It answered, but not what the file expects.
    WrongAnswer(String),
    /// It was not run.
    Skip(String),
}

/// One record's line and outcome.
#[derive(Debug, Clone)]
pub struct RecordResult {
    /// Line of the record in its file.
    pub line: u32,
    /// Where the record is: its line, prefixed with the included file's name when it comes
    /// from an `include` (an included file's lines overlap the including file's).
    pub at: String,
    /// A query (not a statement).
    pub query: bool,
    /// What happened.
    pub outcome: Outcome,
}

/// Runs `path` (shown as `relative`) on `engine`; one result per statement and query.
pub async fn run_file(
    path: &Path,
    relative: &Path,
    engine: Engine,
    dialect: Dialect,
) -> Result<Vec<RecordResult>, String> {
    let spark = relative.starts_with("spark");
    let Some(ctx) = TestContext::try_new_for_test_file(relative).await else {
        return Err("the test context has no setup for this file".into());
    };
    let state = ctx.session_ctx().state();
    match engine {
        Engine::Dirk {
            cluster,
            partitions,
        } => {
            let runner = Runner::new(move || {
                let state = state.clone();
                let cluster = Arc::clone(&cluster);
                async move { DirkDb::new(state, &cluster, partitions, spark).map(DeclaredTypes) }
            });
            run_records(runner, path, dialect, "dirk").await
        }
        Engine::DataFusion => {
            let ctx = ctx.session_ctx().clone();
            let relative = relative.to_path_buf();
            let runner = Runner::new(move || {
                let db = DataFusion::new(
                    ctx.clone(),
                    relative.clone(),
                    indicatif::ProgressBar::hidden(),
                );
                async move { Ok(DeclaredTypes(db)) }
            });
            run_records(runner, path, dialect, "datafusion").await
        }
    }
}

async fn run_records<D, M>(
    mut runner: Runner<DeclaredTypes<D>, M>,
    path: &Path,
    dialect: Dialect,
    engine_name: &str,
) -> Result<Vec<RecordResult>, String>
where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType> + Send,
    M: MakeConnection<Conn = DeclaredTypes<D>>,
{
    runner.add_label(LABEL);
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner.with_normalizer(datafusion_sqllogictest::value_normalizer);
    runner.with_validator(match dialect {
        Dialect::DataFusion => df_unordered,
        Dialect::Sqlite => sqlite_unordered,
    });
    if dialect == Dialect::Sqlite {
        // SQLite's conventions: one value per line, and a result of more than 8 values given as
        // the MD5 of its values (select2-5 say `hash-threshold 8`; select1 relies on the default).
        runner.with_hash_threshold(SQLITE_HASH_THRESHOLD);
        let _ = runner
            .run_async(Record::Control(Control::ResultMode(ResultMode::ValueWise)))
            .await;
    }
    let records = sqllogictest::parse_file::<DFColumnType>(path).map_err(|e| e.to_string())?;
    let sample = match dialect {
        Dialect::Sqlite => sqlite_sample(),
        Dialect::DataFusion => 1,
    };
    let mut queries_seen = 0usize;
    let mut results = Vec::new();
    for record in records {
        let query = matches!(record, Record::Query { .. });
        let (line, at) = match &record {
            Record::Statement { loc, .. } | Record::Query { loc, .. } => {
                let at = if Path::new(loc.file()) == path {
                    loc.line().to_string()
                } else {
                    let name = Path::new(loc.file()).file_name().unwrap_or_default();
                    format!("{}:{}", name.to_string_lossy(), loc.line())
                };
                (loc.line(), at)
            }
            Record::Halt { .. } => break,
            _ => {
                // Control records (`include`, `sleep`, `hash-threshold`, ...) configure the runner.
                let _ = runner.run_async(record).await;
                continue;
            }
        };
        let sampled_out = query && {
            queries_seen += 1;
            (queries_seen - 1) % sample != 0
        };
        let skip = if sampled_out {
            Some(format!("sampled out (every {sample}th query runs)"))
        } else {
            skip_reason(&record)
        };
        if let Some(reason) = skip {
            results.push(RecordResult {
                line,
                at,
                query,
                outcome: Outcome::Skip(reason),
            });
            continue;
        }
        let free = order_free(&record);
        let declared = match (&record, dialect) {
            (
                Record::Query {
                    expected: QueryExpect::Results { types, .. },
                    ..
                },
                Dialect::Sqlite,
            ) => Some(types.clone()),
            _ => None,
        };
        let run = ORDER_FREE.scope(free, runner.run_async(record));
        let outcome = match DECLARED.scope(declared, run).await {
            Ok(_) => Outcome::Pass,
            Err(e) => {
                if std::env::var_os("DIRK_SLT_VERBOSE").is_some() {
                    eprintln!("[{engine_name}] {}:{at}: {e}", path.display());
                }
                let text = one_line(&e.to_string());
                match e.kind() {
                    TestErrorKind::QueryResultMismatch { .. }
                    | TestErrorKind::StatementResultMismatch { .. }
                    | TestErrorKind::QueryResultColumnsMismatch { .. } => {
                        Outcome::WrongAnswer(text)
                    }
                    _ => Outcome::Error(text),
                }
            }
        };
        results.push(RecordResult {
            line,
            at,
            query,
            outcome,
        });
    }
    Ok(results)
}

/// `DIRK_SLT_SQLITE_SAMPLE`: run every `k`-th query of SQLite's files (1: all of them).
fn sqlite_sample() -> usize {
    std::env::var("DIRK_SLT_SQLITE_SAMPLE")
        .ok()
        .and_then(|k| k.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

/// Why a record is not run, if it is not: a condition excludes DataFusion, or it pins
/// DataFusion's `EXPLAIN` text (Dirk explains its own stages).
fn skip_reason(record: &Record<DFColumnType>) -> Option<String> {
    let (conditions, sql) = match record {
        Record::Statement {
            conditions, sql, ..
        }
        | Record::Query {
            conditions, sql, ..
        } => (conditions, sql),
        _ => return None,
    };
    for c in conditions {
        match c {
            Condition::OnlyIf { label } if label != LABEL => {
                return Some(format!("onlyif {label}"))
            }
            Condition::SkipIf { label } if label == LABEL => {
                return Some(format!("skipif {label}"))
            }
            _ => {}
        }
    }
    let head = sql.trim_start().to_ascii_uppercase();
    if head.starts_with("EXPLAIN") {
        return Some("EXPLAIN text (DataFusion's plan, not Dirk's)".into());
    }
    None
}

tokio::task_local! {
    /// Set while a query whose rows may come in any order runs (see [`order_free`]).
    static ORDER_FREE: bool;
    /// The column types a SQLite record declares (`query IRT`), while it runs.
    static DECLARED: Option<Vec<DFColumnType>>;
}

/// The hash threshold SQLite's files were written with.
const SQLITE_HASH_THRESHOLD: usize = 8;

/// An engine whose answers to a SQLite record are printed as SQLite's runner prints them: each
/// value converted to the type the record declares (`I` an integer, `R` a real with three
/// decimals, `T` text), as `slt_sqlite.c` does. Without this a real `12.5` reads `12.5` where the
/// file says `12.500`, and a comparison's `true` reads where it says `1`. Both engines, Dirk and
/// the DataFusion reference, go through it, so it cannot favour either. Outside a SQLite record
/// it passes answers through.
pub struct DeclaredTypes<D>(pub D);

#[async_trait]
impl<D> sqllogictest::AsyncDB for DeclaredTypes<D>
where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType> + Send,
{
    type Error = D::Error;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DFOutput, Self::Error> {
        let output = self.0.run(sql).await?;
        let declared = DECLARED.try_with(|d| d.clone()).ok().flatten();
        Ok(match (output, declared) {
            (DBOutput::Rows { types, rows }, Some(declared)) if declared.len() == types.len() => {
                let rows = rows
                    .into_iter()
                    .map(|row| {
                        row.iter()
                            .zip(&declared)
                            .map(|(value, ty)| sqlite_value(value, ty))
                            .collect()
                    })
                    .collect();
                DBOutput::Rows {
                    types: declared,
                    rows,
                }
            }
            (output, _) => output,
        })
    }

    fn engine_name(&self) -> &str {
        self.0.engine_name()
    }

    async fn sleep(dur: Duration) {
        D::sleep(dur).await;
    }

    async fn shutdown(&mut self) {
        self.0.shutdown().await;
    }
}

/// `value`, as DataFusion's runner prints it, converted to `ty` as SQLite's runner converts a
/// result: an integer column truncates a real, a real column prints three decimals, a boolean
/// is 1 or 0. `NULL` and text stay as they are.
fn sqlite_value(value: &str, ty: &DFColumnType) -> String {
    if value == "NULL" {
        return value.to_string();
    }
    let number = match value {
        "true" => Some(1.0),
        "false" => Some(0.0),
        _ => value.parse::<f64>().ok(),
    };
    match ty {
        DFColumnType::Integer => match (value.parse::<i64>(), number) {
            (Ok(_), _) => value.to_string(),
            (Err(_), Some(n)) => format!("{}", n.trunc() as i64),
            // SQLite reads a text's numeric prefix; none of these files depends on that.
            (Err(_), None) => value.to_string(),
        },
        DFColumnType::Float => match number {
            Some(n) => format!("{n:.3}"),
            None => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// A query whose outermost `SELECT` has no `ORDER BY` and whose record asks for no sorting may
/// return its rows in any order; the file holds the order one DataFusion run produced. Such a
/// query is compared as a multiset of rows: both sides sorted, never just the answer (the file's
/// lines are in DataFusion's order, not sorted, so sorting one side would fail every engine and
/// hide a wrong answer behind "fails on DataFusion too").
fn order_free(record: &Record<DFColumnType>) -> bool {
    match record {
        Record::Query {
            sql,
            expected:
                QueryExpect::Results {
                    sort_mode: None | Some(SortMode::NoSort),
                    ..
                },
            ..
        } => !has_outer_order_by(sql),
        _ => false,
    }
}

/// Compares with `exact`, and, for an order-free query, as multisets of rows.
fn unordered_or(
    exact: sqllogictest::Validator,
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    if exact(normalizer, actual, expected) {
        return true;
    }
    if !ORDER_FREE.try_with(|free| *free).unwrap_or(false) {
        return false;
    }
    let mut actual = actual.to_vec();
    actual.sort_by_cached_key(|row| row.join(" ").trim_end().to_string());
    let mut expected = expected.to_vec();
    expected.sort_by_cached_key(normalizer);
    exact(normalizer, &actual, &expected)
}

fn df_unordered(n: sqllogictest::Normalizer, a: &[Vec<String>], e: &[String]) -> bool {
    unordered_or(datafusion_sqllogictest::df_value_validator, n, a, e)
}

fn sqlite_unordered(n: sqllogictest::Normalizer, a: &[Vec<String>], e: &[String]) -> bool {
    unordered_or(sqlite_value_validator, n, a, e)
}

fn has_outer_order_by(sql: &str) -> bool {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use datafusion::sql::sqlparser::ast::Statement;
    match DFParser::parse_sql(sql) {
        Ok(statements) => statements.iter().any(|s| match s {
            DfStatement::Statement(s) => match s.as_ref() {
                Statement::Query(q) => q.order_by.is_some(),
                // Not a plain query: keep the file's order.
                _ => true,
            },
            _ => true,
        }),
        // Let the engine report what it makes of it.
        Err(_) => true,
    }
}

/// Compares a SQLite record's values, one per line (the runner is value-wise for these files).
fn sqlite_value_validator(
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    let expected: Vec<String> = expected.iter().map(normalizer).collect();
    let actual: Vec<String> = actual
        .iter()
        .map(|row| row.iter().map(normalizer).collect::<Vec<_>>().join(" "))
        .collect();
    actual == expected
}

fn one_line(s: &str) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match joined.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &joined[..i]),
        None => joined,
    }
}
