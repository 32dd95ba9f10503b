//! A memory budget per worker: with budgets far below the tables' size, resident chunks spill to
//! disk and come back, sorts spill their state, and every answer still equals DataFusion's on
//! one node; mutations of spilled tables land; a spill directory that cannot be written gives a
//! clear error and leaves every table intact.

use super::compare::{assert_same, run_datafusion, run_dirk, text_of, try_dirk};
use super::harness::{dirk_binary, on_cluster};
use super::tpch::reference_at;
use dirk_dtable::flight::LocalWorkers;
use dirk_dtable::tpch::QUERIES;
use dirk_dtable::Session;
use std::path::{Path, PathBuf};

const SCALE: f64 = 0.1;
const WORKERS: usize = 2;
const PARTITIONS: usize = 8;

/// A session of two workers with `per_worker` bytes each, spilling under `spill_dir`: in-process
/// workers, or worker processes started with `--memory-limit` (kept alive by the returned
/// handle).
fn budgeted(per_worker: u64, spill_dir: &Path) -> (Session, Option<LocalWorkers>) {
    budgeted_on(WORKERS, PARTITIONS, per_worker, spill_dir)
}

/// [`budgeted`] with `workers` workers and `partitions` partitions.
fn budgeted_on(
    workers: usize,
    partitions: usize,
    per_worker: u64,
    spill_dir: &Path,
) -> (Session, Option<LocalWorkers>) {
    if !on_cluster() {
        let s = Session::builder()
            .workers(workers)
            .partitions(partitions)
            .memory(per_worker as usize * workers)
            .spill_dir(spill_dir)
            .build()
            .unwrap();
        return (s, None);
    }
    let args = [
        "--memory-limit".to_string(),
        per_worker.to_string(),
        "--spill-dir".to_string(),
        spill_dir.display().to_string(),
    ];
    // One task at a time per worker, as in-process workers run them: each running task holds
    // its input chunks in memory, so the budget has to cover one task's inputs per thread.
    let processes = LocalWorkers::start_with_args(&dirk_binary(), workers, 1, &args)
        .unwrap_or_else(|e| panic!("cannot start budgeted workers: {e}"));
    let s = Session::builder()
        .workers(processes.addresses())
        .token(processes.token())
        .partitions(partitions)
        .build()
        .unwrap();
    (s, Some(processes))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dirk-memory-test-{}-{}-{name}",
        std::process::id(),
        on_cluster()
    ));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(&d);
    d
}

/// Bytes spilled and read back, summed over the session's workers.
fn spilled_and_reloaded(s: &Session) -> (u64, u64) {
    s.engine().wait_idle().unwrap();
    s.engine().worker_status().iter().fold((0, 0), |(a, b), w| {
        (a + w.memory.spilled_total, b + w.memory.reloaded_total)
    })
}

/// A `name=N` figure of `EXPLAIN ANALYZE`, summed over its stages.
fn analyzed(text: &str, name: &str) -> u64 {
    text.split(&format!("{name}="))
        .skip(1)
        .filter_map(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// TPC-H SF 0.1 (about 190 MB of Arrow memory as loaded) on two workers of 48 MiB each: chunks
/// spill while loading and while queries run, every answer equals DataFusion's, a sort past its
/// share spills and `EXPLAIN ANALYZE` says so, and in-place mutations of spilled tables land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_on_a_budget_far_below_its_size_spills_and_equals_datafusion() {
    let reference = reference_at(SCALE).await;
    let dir = scratch("tpch");
    let (s, _workers) = budgeted(48 << 20, &dir);
    s.load_tpch(SCALE).await.unwrap();
    let (spilled, _) = spilled_and_reloaded(&s);
    assert!(spilled > 0, "loading spilled nothing");
    let storage = s.table_storage();
    let on_disk: usize = storage.iter().map(|t| t.spilled_chunks).sum();
    assert!(on_disk > 0, "no table has a chunk on disk: {storage:?}");
    let lineitem_rows: u64 = storage
        .iter()
        .filter(|t| t.table == "lineitem")
        .map(|t| t.rows)
        .sum();
    assert_eq!(lineitem_rows, s.table("lineitem").unwrap().num_rows());

    for (i, sql) in QUERIES.iter().enumerate() {
        let what = format!("q{:02} within 48 MiB per worker", i + 1);
        let want = run_datafusion(&reference, sql).await;
        let got = run_dirk(&s, sql, &what).await;
        assert_same(&got, &want, true, &what);
    }
    let (spilled, reloaded) = spilled_and_reloaded(&s);
    assert!(
        spilled > 0 && reloaded > 0,
        "spilled {spilled}, reloaded {reloaded}"
    );

    // A sort of half of `lineitem` per task, past its share of the budget: it spills.
    let sort = "SELECT max(rn), count(*) FROM (SELECT row_number() OVER \
                (PARTITION BY l_suppkey % 2 ORDER BY l_comment, l_shipinstruct, l_shipmode) rn \
                FROM lineitem)";
    for set in [
        "SET datafusion.execution.sort_spill_reservation_bytes = 1048576",
        "SET datafusion.execution.target_partitions = 2",
    ] {
        run_dirk(&s, set, set).await;
    }
    let plan = text_of(&run_dirk(&s, &format!("EXPLAIN ANALYZE {sort}"), "analyze sort").await);
    assert!(
        analyzed(&plan, "operators_spilled_bytes") > 0,
        "the sort did not spill:\n{plan}"
    );
    assert!(analyzed(&plan, "chunks_reloaded_bytes") > 0, "{plan}");
    let want = run_datafusion(&reference, sort).await;
    assert_same(
        &run_dirk(&s, sort, "sort").await,
        &want,
        true,
        "spilling sort",
    );

    // In-place changes to spilled chunks: read back, changed, kept.
    let check = "SELECT count(*), sum(l_quantity), sum(l_extendedprice) FROM lineitem";
    let before = run_datafusion(&reference, check).await;
    run_dirk(
        &s,
        "UPDATE lineitem SET l_quantity = l_quantity + 1 WHERE l_orderkey % 3 = 0",
        "update",
    )
    .await;
    run_dirk(
        &s,
        "DELETE FROM lineitem WHERE l_orderkey % 5 = 0",
        "delete",
    )
    .await;
    let want = run_datafusion(
        &reference,
        "SELECT count(*), CAST(sum(CASE WHEN l_orderkey % 3 = 0 THEN l_quantity + 1 \
         ELSE l_quantity END) AS DECIMAL(25, 2)), sum(l_extendedprice) FROM lineitem \
         WHERE l_orderkey % 5 <> 0",
    )
    .await;
    assert_ne!(text_of(&before), text_of(&want));
    assert_same(
        &run_dirk(&s, check, "after").await,
        &want,
        true,
        "after UPDATE and DELETE",
    );
    drop(s);
    drop(_workers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where spill files cannot be written (the spill directory is a file), chunks stay in memory
/// past the budget; a query that then needs memory fails with one line that says why, the
/// tables are intact, and the session goes on once the budget allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_directory_that_cannot_be_written_is_a_clear_error() {
    let blocked = scratch("blocked");
    std::fs::write(&blocked, "a file, not a directory").unwrap();
    let (s, _workers) = budgeted(4 << 20, &blocked);
    s.load_tpch(0.05).await.unwrap();
    let rows = s.table("orders").unwrap().num_rows();
    let err = try_dirk(
        &s,
        "SELECT o_custkey, count(*) FROM orders GROUP BY o_custkey ORDER BY 2 DESC, 1 LIMIT 3",
    )
    .await
    .expect_err("no memory left and nowhere to spill")
    .to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains("Resources exhausted") && err.contains("cannot write a spill file"),
        "{err}"
    );
    let (spilled, _) = spilled_and_reloaded(&s);
    assert_eq!(spilled, 0);
    // Intact: every chunk still answers, with every row.
    let orders = s.table("orders").unwrap();
    let collected: u64 = orders
        .collect(s.engine())
        .unwrap()
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    assert_eq!(collected, rows);
    let _ = std::fs::remove_file(&blocked);
}

/// A hash join's build side cannot spill: past the budget it fails. The query then runs again
/// with sort-merge joins, whose sorts spill, and answers as DataFusion does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_join_past_the_budget_runs_again_as_a_spilling_sort_merge_join() {
    let dir = scratch("join");
    let (s, _workers) = budgeted_on(1, 4, 14 << 20, &dir);
    let make = "CREATE TABLE big AS SELECT value AS v, value % 1000 AS k, repeat('x', 40) AS pad \
                FROM generate_series(1, 300000)";
    run_dirk(&s, make, "setup").await;
    let join = "SELECT count(*) AS n, sum(b.v) AS total, max(a.k) AS k FROM big a JOIN big b \
                ON a.v = b.v AND a.pad = b.pad";
    // As planned (hash joins; EXPLAIN ANALYZE runs the plan as it is): out of memory.
    let err = try_dirk(&s, &format!("EXPLAIN ANALYZE {join}"))
        .await
        .expect_err("the build side does not fit")
        .to_string();
    assert!(
        err.contains("Resources exhausted") && err.contains("HashJoin"),
        "{err}"
    );
    // It names the worker: in-process ones by id, worker processes by address.
    assert!(
        err.contains("worker 0: HashJoin") || err.contains("the worker at 127.0.0.1:"),
        "{err}"
    );
    let got = run_dirk(&s, join, "join").await;
    // A join with no rows to return ends cleanly (its stream is read past its end once).
    let none = "SELECT a.v FROM big a JOIN big b ON a.v = b.v WHERE a.v < 0";
    assert!(run_dirk(&s, none, "empty")
        .await
        .iter()
        .all(|b| b.num_rows() == 0));
    let reference = datafusion::prelude::SessionContext::new();
    run_datafusion(&reference, make).await;
    let want = run_datafusion(&reference, join).await;
    assert_same(
        &got,
        &want,
        true,
        "the join run again with sort-merge joins",
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `collect()` of a result past the session's result limit says so instead of filling memory;
/// the same result streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collecting_a_result_past_the_limit_says_so_and_the_stream_still_reads_it() {
    use futures::TryStreamExt as _;
    let s = super::harness::builder(2)
        .partitions(4)
        .result_limit(1 << 20)
        .build()
        .unwrap();
    let sql = "SELECT value AS v, repeat('x', 40) AS pad FROM generate_series(1, 200000)";
    let err = try_dirk(&s, sql)
        .await
        .expect_err("10 MB past a 1 MiB limit");
    assert!(
        matches!(err, dirk_dtable::DirkError::ResultTooLarge { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("execute_stream"), "{err}");
    let mut stream = s.sql(sql).await.unwrap().execute_stream().await.unwrap();
    let mut rows = 0;
    while let Some(batch) = stream.try_next().await.unwrap() {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 200_000);
    let small = run_dirk(
        &s,
        "SELECT max(value) FROM generate_series(1, 200000)",
        "small",
    )
    .await;
    assert_eq!(small[0].num_rows(), 1);
    super::harness::assert_workers_hold(&s, 0, "after the refused and the streamed result").await;
}
