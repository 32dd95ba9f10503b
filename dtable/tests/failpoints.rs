//! Failpoints in a statement's commit (the `fail` crate): a statement whose in-place write
//! fails, or that is dropped while its writes run, leaves the table exactly as it was.
//! Failpoints are process-wide, so these tests have their own binary and take turns.

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use dirk_dtable::Session;
use std::time::Duration;

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WRITE: &str = "dirk-update-apply";
const UNDO: &str = "dirk-update-undo";

async fn run(s: &Session, sql: &str) -> dirk_dtable::Result<Vec<RecordBatch>> {
    s.sql(sql).await?.collect().await
}

/// The table's rows in `id` order, as text.
async fn contents(s: &Session) -> String {
    let rows = run(s, "SELECT * FROM fp ORDER BY id").await.unwrap();
    pretty_format_batches(&rows).unwrap().to_string()
}

/// Fails, naming the first row that differs, unless `got` is `want`.
fn assert_unchanged(got: &str, want: &str, what: &str) {
    if let Some((g, w)) = got.lines().zip(want.lines()).find(|(g, w)| g != w) {
        panic!("{what}: the table changed: {g} where it held {w}");
    }
    assert_eq!(got.lines().count(), want.lines().count(), "{what}: rows");
}

/// Chunks the workers hold once the engine is idle (the undo's chunks are freed by then).
async fn held(s: &Session) -> usize {
    s.engine().wait_idle().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.engine().wait_idle().unwrap();
    s.engine().worker_status().iter().map(|w| w.chunks).sum()
}

/// A session of `workers` in-process workers; see [`session_on`].
async fn session(workers: usize) -> Session {
    session_on(Session::builder().workers(workers)).await
}

/// A session with table `fp` of 400 rows in 4 chunks, and `other` to change it with (50 rows
/// more).
async fn session_on(builder: dirk_dtable::SessionBuilder) -> Session {
    let s = builder.partitions(4).build().unwrap();
    run(
        &s,
        "CREATE TABLE fp AS SELECT value AS id, value * 10 AS fp_x, \
         CAST(value AS VARCHAR) AS label FROM generate_series(1, 400)",
    )
    .await
    .unwrap();
    run(
        &s,
        "CREATE TABLE other AS SELECT value AS id, value + 7 AS v FROM generate_series(1, 450)",
    )
    .await
    .unwrap();
    let fp = s.repartition_by("fp", &["id"], 4).await.unwrap();
    let chunks = fp.chunks().filter(|c| c.rows > 0).count();
    assert!(chunks >= 4, "fp has {chunks} chunks with rows");
    s
}

/// `statement` fails at its first write but one; the table is as before, nothing leaks, and
/// the statement succeeds once the failpoint is gone.
async fn fails_whole(s: &Session, statement: &str) {
    let before = contents(s).await;
    let chunks = held(s).await;
    // The first write lands; every later one fails (the writes run in parallel, so which
    // chunk is written first differs from run to run).
    fail::cfg(WRITE, "1*off->return(fp_x)").unwrap();
    let e = run(s, statement).await;
    fail::remove(WRITE);
    let e = e.expect_err("the statement fails").to_string();
    assert!(e.contains("failpoint"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert_unchanged(&contents(s).await, &before, statement);
    assert_eq!(held(s).await, chunks, "{statement}: chunks leaked");
    run(s, statement).await.unwrap();
    assert_ne!(contents(s).await, before, "{statement} changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_leaves_the_table_as_it_was() {
    let _turn = TURNS.lock().await;
    for workers in [1, 3, 4] {
        let s = session(workers).await;
        fails_whole(
            &s,
            "UPDATE fp SET fp_x = fp_x + 1, label = 'changed' WHERE id % 3 = 0",
        )
        .await;
        fails_whole(&s, "UPDATE fp SET fp_x = -fp_x").await;
        fails_whole(
            &s,
            "UPDATE fp SET fp_x = other.v FROM other WHERE fp.id = other.id AND other.id > 50",
        )
        .await;
        fails_whole(
            &s,
            "MERGE INTO fp USING other ON fp.id = other.id \
             WHEN MATCHED AND other.id % 2 = 0 THEN UPDATE SET fp_x = other.v * 3",
        )
        .await;
        // One chunk loses a row (it is rewritten), rows are inserted, the other chunks are
        // written in place: all of it is undone.
        fails_whole(
            &s,
            "MERGE INTO fp USING other ON fp.id = other.id \
             WHEN MATCHED AND other.id = 7 THEN DELETE \
             WHEN MATCHED THEN UPDATE SET fp_x = other.v \
             WHEN NOT MATCHED THEN INSERT VALUES (other.id, other.v, 'new')",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_dropped_while_it_writes_is_undone() {
    let _turn = TURNS.lock().await;
    let s = session(3).await;
    let before = contents(&s).await;
    let chunks = held(&s).await;
    // Every write but the first waits 300 ms; the statement is dropped at 100 ms, while they
    // wait (or, on a slow machine, before it wrote at all).
    fail::cfg(WRITE, "1*off->sleep(300)").unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        run(&s, "UPDATE fp SET fp_x = 0, label = 'dropped'"),
    )
    .await;
    assert!(dropped.is_err(), "the statement finished within 100 ms");
    fail::remove(WRITE);
    assert_unchanged(&contents(&s).await, &before, "a dropped statement");
    assert_eq!(held(&s).await, chunks, "chunks leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_that_fails_is_reported_as_such() {
    let _turn = TURNS.lock().await;
    let s = session(3).await;
    fail::cfg(WRITE, "1*off->return(fp_x)").unwrap();
    fail::cfg(UNDO, "return(fp_x)").unwrap();
    let e = run(&s, "UPDATE fp SET fp_x = 1").await;
    fail::remove(WRITE);
    fail::remove(UNDO);
    let e = e.expect_err("the statement fails").to_string();
    assert!(e.contains("undoing its writes failed too"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

/// The same on `dirk worker` processes: each worker's first write lands, its later ones
/// fail; the statement fails and every write is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_on_worker_processes_leaves_the_table_as_it_was() {
    use dirk_dtable::flight::{dirk_binary_of_this_build, LocalWorkers};
    let _turn = TURNS.lock().await;
    let args = [
        "--failpoints".to_string(),
        format!("{WRITE}=1*off->return(fp_x)"),
    ];
    let binary = dirk_binary_of_this_build().unwrap();
    let workers = LocalWorkers::start_with_args(&binary, 3, 1, &args).unwrap();
    let s = session_on(
        Session::builder()
            .workers(workers.addresses())
            .token(workers.token()),
    )
    .await;
    let before = contents(&s).await;
    let chunks = held(&s).await;
    for statement in [
        "UPDATE fp SET fp_x = fp_x + 1, label = 'changed' WHERE id % 3 = 0",
        "MERGE INTO fp USING other ON fp.id = other.id \
         WHEN MATCHED THEN UPDATE SET fp_x = other.v * 3",
    ] {
        let e = run(&s, statement).await;
        let e = e.expect_err("the statement fails").to_string();
        assert!(e.contains("failpoint"), "{e}");
        assert_unchanged(&contents(&s).await, &before, statement);
    }
    // A remote worker gets its frees as messages nobody waits for: give them a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(&s).await != chunks && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held(&s).await, chunks, "chunks leaked");
}
