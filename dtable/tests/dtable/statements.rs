//! DDL and DML statements, tables resident across queries, and clear errors on bad input.

use arrow::array::{Array, Int64Array, UInt64Array};
use arrow::util::pretty::pretty_format_batches;
use dirk_dtable::Session;

async fn run(s: &Session, sql: &str) -> Vec<arrow::array::RecordBatch> {
    s.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn scalar(s: &Session, sql: &str) -> i64 {
    let b = run(s, sql).await;
    let col = b[0].column(0);
    if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        a.value(0)
    } else {
        col.as_any().downcast_ref::<UInt64Array>().unwrap().value(0) as i64
    }
}

async fn error(s: &Session, sql: &str) -> String {
    let r = match s.sql(sql).await {
        Ok(df) => df.collect().await.map(|_| ()),
        Err(e) => Err(e),
    };
    r.expect_err(sql).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_insert_select_drop() {
    let s = super::harness::builder(2).partitions(3).build().unwrap();
    run(&s, "CREATE TABLE x (a BIGINT, b VARCHAR)").await;
    assert_eq!(scalar(&s, "SELECT count(*) FROM x").await, 0);
    let n = scalar(&s, "INSERT INTO x VALUES (1, 'one'), (2, 'two'), (3, NULL)").await;
    assert_eq!(n, 3);
    let n = scalar(&s, "INSERT INTO x SELECT a + 10, b FROM x WHERE a < 3").await;
    assert_eq!(n, 2);
    assert_eq!(
        scalar(&s, "SELECT sum(a) FROM x").await,
        1 + 2 + 3 + 11 + 12
    );
    assert_eq!(scalar(&s, "SELECT count(b) FROM x").await, 4);

    run(
        &s,
        "CREATE TABLE y AS SELECT a * 2 AS d FROM x WHERE b IS NOT NULL",
    )
    .await;
    assert_eq!(scalar(&s, "SELECT max(d) FROM y").await, 24);
    assert_eq!(s.table_names(), vec!["x".to_string(), "y".to_string()]);
    let e = error(&s, "CREATE TABLE y AS SELECT 1").await;
    assert!(e.contains("already exists"), "{e}");
    run(&s, "CREATE TABLE IF NOT EXISTS y AS SELECT 1").await;
    run(&s, "CREATE OR REPLACE TABLE y AS SELECT 7 AS d").await;
    assert_eq!(scalar(&s, "SELECT max(d) FROM y").await, 7);

    run(&s, "DROP TABLE y").await;
    let e = error(&s, "SELECT * FROM y").await;
    assert!(
        e.contains("y") && e.to_lowercase().contains("not found"),
        "{e}"
    );
    run(&s, "DROP TABLE IF EXISTS y").await;
    let e = error(&s, "DROP TABLE y").await;
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_stay_resident_and_queries_run_as_tasks() {
    let s = super::harness::builder(2).partitions(4).build().unwrap();
    run(
        &s,
        "CREATE TABLE r AS SELECT * FROM (VALUES (1), (2), (3), (4), (5)) AS v(n)",
    )
    .await;
    let before = s.table("r").unwrap();
    let chunks_before: Vec<_> = before.chunks().map(|c| c.id).collect();
    s.engine().clear_event_log();
    for _ in 0..3 {
        assert_eq!(scalar(&s, "SELECT sum(n) FROM r").await, 15);
    }
    let after = s.table("r").unwrap();
    assert_eq!(
        after.chunks().map(|c| c.id).collect::<Vec<_>>(),
        chunks_before,
        "same chunks"
    );
    let log = s.engine().event_log();
    assert!(
        log.records
            .iter()
            .filter(|r| r.name.starts_with("stage"))
            .count()
            >= 3,
        "queries ran as stage tasks"
    );
    // Intermediate and result chunks are freed: only the table's chunks remain.
    super::harness::assert_workers_hold(&s, chunks_before.len(), "after three queries").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_the_session_goes_on() {
    let s = super::harness::builder(2).build().unwrap();
    run(&s, "CREATE TABLE z (a INT)").await;
    for (sql, expect) in [
        ("SELEC 1", "SELEC"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT no_such_column FROM z", "no_such_column"),
        ("SELECT 'abc' + 1", "Utf8 + Int64"),
        ("SELECT CAST('x' AS INT)", "x"),
    ] {
        let e = error(&s, sql).await;
        assert!(e.contains(expect), "{sql}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    run(&s, "INSERT INTO z VALUES (5)").await;
    let b = run(&s, "SELECT a FROM z").await;
    assert_eq!(
        pretty_format_batches(&b)
            .unwrap()
            .to_string()
            .lines()
            .count(),
        5
    );
}
