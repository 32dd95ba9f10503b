//! Every query's result equals DataFusion's on one node over the same data, at any number of
//! workers and partitions.

use super::compare::{assert_same, run_dirk};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::Session;
use std::sync::Arc;

/// Deterministic test data: `t(a, b, c, k)` with nulls, and `u(k, name)`.
pub(crate) fn tables() -> Vec<(&'static str, RecordBatch)> {
    let n = 2000i64;
    let mut x: u64 = 0x9E37_79B9;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let a: Int64Array = (0..n)
        .map(|i| {
            if i % 17 == 0 {
                None
            } else {
                Some((next() % 1000) as i64 - 300)
            }
        })
        .collect();
    let b: StringArray = (0..n)
        .map(|i| {
            if i % 23 == 0 {
                None
            } else {
                Some(["red", "green", "blue", "teal"][(next() % 4) as usize])
            }
        })
        .collect();
    let c: Float64Array = (0..n)
        .map(|i| {
            if i % 29 == 0 {
                None
            } else {
                Some((next() % 10_000) as f64 / 7.0)
            }
        })
        .collect();
    let k: Int64Array = (0..n).map(|_| Some((next() % 60) as i64)).collect();
    let t = RecordBatch::try_from_iter([
        ("a", Arc::new(a) as ArrayRef),
        ("b", Arc::new(b) as ArrayRef),
        ("c", Arc::new(c) as ArrayRef),
        ("k", Arc::new(k) as ArrayRef),
    ])
    .unwrap();
    let uk: Int64Array = (0..50).map(Some).collect();
    let name: StringArray = (0..50).map(|i| Some(format!("name{}", i % 7))).collect();
    let u = RecordBatch::try_from_iter([
        ("k", Arc::new(uk) as ArrayRef),
        ("name", Arc::new(name) as ArrayRef),
    ])
    .unwrap();
    vec![("t", t), ("u", u)]
}

/// (query, whether its row order is defined)
const QUERIES: &[(&str, bool)] = &[
    ("SELECT * FROM t", false),
    ("SELECT a, b FROM t WHERE a > 100 AND b <> 'red'", false),
    ("SELECT a + 1 AS a1, c * 2, upper(b) FROM t WHERE c IS NOT NULL", false),
    ("SELECT count(*), count(a), sum(a), min(c), max(c), avg(a) FROM t", true),
    ("SELECT b, count(*), sum(a), avg(c) FROM t GROUP BY b", false),
    ("SELECT k, b, count(*) AS n FROM t GROUP BY k, b HAVING count(*) > 5", false),
    ("SELECT t.a, u.name FROM t JOIN u ON t.k = u.k WHERE t.a < 0", false),
    ("SELECT t.k, u.name FROM t LEFT JOIN u ON t.k = u.k", false),
    ("SELECT u.k, t.a FROM t RIGHT JOIN u ON t.k = u.k AND t.a > 500", false),
    ("SELECT t.k, u.k FROM t FULL JOIN u ON t.k = u.k AND t.a > 600", false),
    ("SELECT * FROM u WHERE k IN (SELECT k FROM t WHERE a > 650)", false),
    ("SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.k = u.k AND t.a > 0)", false),
    // `NOT IN` is a null-aware anti join: one NULL among the probe rows empties the result, so
    // its probe side must stay whole (a NULL in any partition).
    ("SELECT * FROM u WHERE k NOT IN (SELECT a FROM t)", false),
    ("SELECT * FROM u WHERE k NOT IN (SELECT k FROM t WHERE a > 600)", false),
    ("SELECT * FROM u WHERE EXISTS (SELECT 1 FROM t WHERE t.k = u.k AND t.b <> 'red' AND t.a > 500)", false),
    ("SELECT a, b, c FROM t ORDER BY a DESC NULLS LAST, c, b LIMIT 50", true),
    ("SELECT DISTINCT b FROM t", false),
    ("SELECT b FROM t WHERE a > 600 UNION ALL SELECT name FROM u", false),
    ("SELECT b FROM t UNION SELECT name FROM u", false),
    ("SELECT k, a, rank() OVER (PARTITION BY k ORDER BY a, c) AS r FROM t WHERE a IS NOT NULL AND c IS NOT NULL", false),
    ("SELECT k, sum(a) OVER (PARTITION BY k) AS s FROM t", false),
    ("WITH big AS (SELECT k, sum(a) AS s FROM t GROUP BY k) SELECT u.name, big.s FROM big JOIN u USING (k) ORDER BY big.s, u.name", true),
    ("SELECT count(DISTINCT b), count(DISTINCT k) FROM t", true),
    ("SELECT k, count(*) FROM t GROUP BY k ORDER BY count(*) DESC, k LIMIT 5", true),
    ("SELECT * FROM (VALUES (1, 'x'), (2, 'y')) AS v(n, s)", false),
    ("SELECT 1 + 2, 'literal', NULL", true),
    ("SELECT a FROM t WHERE a > 10000", false),
    ("SELECT t1.k, count(*) FROM t t1 JOIN t t2 ON t1.k = t2.k AND t1.a < t2.a GROUP BY t1.k", false),
    // One empty grouping set: datafusion-proto drops it unless Dirk restores it after decoding.
    ("SELECT count(*), sum(a) FROM t GROUP BY GROUPING SETS (())", true),
    ("SELECT count(*) FROM t WHERE a > 10000 GROUP BY GROUPING SETS (())", true),
    ("SELECT k, b, count(*) FROM t GROUP BY ROLLUP (k, b)", false),
    // Field metadata that datafusion-proto does not carry: a function's return field must keep
    // its metadata inside a fragment (casts to extension types: `proto.rs`'s unit test).
    ("SELECT a, arrow_metadata(with_metadata(a, 'unit', 'ms'), 'unit') FROM t WHERE a > 600", false),
    // A table function none of whose columns are read: its projection must reach the workers.
    ("SELECT count(*) FROM generate_series(1, 200000)", true),
    ("SELECT count(*) FROM generate_series(1, 20) x, range(3) y", true),
];

pub(crate) async fn reference(sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (name, batch) in tables() {
        let t = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table(name, Arc::new(t)).unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// A session holding the test tables.
pub(crate) fn session(workers: usize, partitions: usize) -> Session {
    let s = super::harness::builder(workers)
        .partitions(partitions)
        .build()
        .unwrap();
    for (name, batch) in tables() {
        s.create_table(name, vec![batch]).unwrap();
    }
    s
}

async fn check_all(workers: usize, partitions: usize) {
    let s = session(workers, partitions);
    for (sql, ordered) in QUERIES {
        let want = reference(sql).await;
        let what = format!("{workers} workers, {partitions} partitions: {sql}");
        let got = run_dirk(&s, sql, &what).await;
        assert_same(&got, &want, *ordered, &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_equal_datafusion_on_one_worker() {
    for p in [1, 3, 8] {
        check_all(1, p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_equal_datafusion_on_two_workers() {
    for p in [1, 3, 8] {
        check_all(2, p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_equal_datafusion_on_four_workers() {
    for p in [1, 3, 8] {
        check_all(4, p).await;
    }
}

/// A join that emits the build rows nothing matched (LEFT, FULL, SEMI and ANTI with the small
/// side built) is split by its keys, so it runs as one task per partition, not as one task over
/// a gathered probe side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_emit_unmatched_build_rows_run_in_every_partition() {
    let s = session(2, 3);
    for sql in [
        "SELECT u.k, t.a FROM u LEFT JOIN t ON t.k = u.k AND t.a > 300",
        "SELECT t.k, u.k FROM t FULL JOIN u ON t.k = u.k AND t.a > 600",
        "SELECT * FROM u WHERE k IN (SELECT k FROM t WHERE a > 650)",
        "SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.k = u.k AND t.a > 0)",
    ] {
        let plan = s.sql(sql).await.unwrap().explain().await.unwrap();
        let emits_build_rows = |stage: &&str| {
            ["Left,", "LeftSemi,", "LeftAnti,", "Full,"]
                .iter()
                .any(|t| stage.contains(&format!("join_type={t}")))
        };
        let join_stages: Vec<&str> = plan.split("\nStage ").filter(emits_build_rows).collect();
        assert!(!join_stages.is_empty(), "{sql}: no join in\n{plan}");
        for stage in join_stages {
            let heading = stage.lines().next().unwrap_or_default();
            assert!(
                heading.contains("(3 tasks") && stage.contains("mode=Partitioned"),
                "{sql}: a join stage is not split over the partitions:\n{plan}"
            );
        }
    }
}

/// Sets DataFusion's own broadcast thresholds to zero: a join is broadcast only where Dirk's
/// rule says so.
async fn without_datafusion_broadcasts(s: &Session) {
    for setting in [
        "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0",
        "SET datafusion.optimizer.hash_join_single_partition_threshold = 0",
    ] {
        run_dirk(s, setting, setting).await;
    }
}

/// DataFusion broadcasts a join's build side only under a fixed size; Dirk also broadcasts one
/// whose copies, one per probe task, cost less than shuffling both sides. With DataFusion's own
/// thresholds at zero, `u` (50 rows) joined to `t` (2000 rows) over 3 partitions is broadcast
/// (2 × 8 × 50 ≤ 2050), and `t` joined to itself is shuffled; both answer as DataFusion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_broadcasts_its_build_side_where_the_copies_cost_less_than_a_shuffle() {
    let s = session(2, 3);
    without_datafusion_broadcasts(&s).await;
    for (sql, broadcast) in [
        ("SELECT t.a, u.name FROM t JOIN u ON t.k = u.k", true),
        (
            "SELECT t1.a, t2.c FROM t t1 JOIN t t2 ON t1.k = t2.k AND t1.a < t2.a - 900",
            false,
        ),
    ] {
        let plan = s.sql(sql).await.unwrap().explain().await.unwrap();
        let (want, not) = if broadcast {
            ("mode=CollectLeft", "mode=Partitioned")
        } else {
            ("mode=Partitioned", "mode=CollectLeft")
        };
        assert!(
            plan.contains(want) && !plan.contains(not),
            "{sql}: expected {want}:\n{plan}"
        );
        let got = run_dirk(&s, sql, sql).await;
        assert_same(&got, &reference(sql).await, false, sql);
    }
}

/// Tables hash-partitioned by a key (`repartition_by`) are grouped and joined on it where they
/// lie: no exchange, partition `p` of both on the same worker, DataFusion's answers. A change
/// that could put a key in the wrong partition (an `INSERT`, an `UPDATE` of the key) makes the
/// partitioning unknown again, and the answers stay right; an `UPDATE` of another column and a
/// `DELETE` keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_split_by_a_key_are_grouped_and_joined_where_they_lie() {
    let s = session(3, 4);
    // The join is a partitioned one, not DataFusion's broadcast of a small side.
    without_datafusion_broadcasts(&s).await;
    let t = s.repartition_by("t", &["k"], 4).await.unwrap();
    let u = s.repartition_by("u", &["k"], 4).await.unwrap();
    assert_eq!(t.hash_keys(), Some(&["k".to_string()][..]));
    let workers = s.engine().workers();
    for (p, (tp, up)) in t.partitions().iter().zip(u.partitions()).enumerate() {
        for c in tp.iter().chain(up) {
            assert_eq!(
                c.owner,
                workers[p % workers.len()],
                "partition {p} of t and u"
            );
        }
    }
    let group = "SELECT k, count(*), sum(c) FROM t GROUP BY k";
    let join = "SELECT t.a, t.k, u.name FROM t JOIN u ON t.k = u.k";
    for sql in [group, join] {
        let plan = s.sql(sql).await.unwrap().explain().await.unwrap();
        assert!(
            !plan.contains("RepartitionExec") && plan.contains("hash partitioned by [k]"),
            "{sql}: read where it lies:\n{plan}"
        );
        assert_same(
            &run_dirk(&s, sql, sql).await,
            &reference(sql).await,
            false,
            sql,
        );
    }

    // Each statement, whether the changed table keeps its layout, and what a query then
    // answers, from the original tables.
    let steps = [
        // Another column changes: the rows keep their keys, and their partitions.
        (
            "UPDATE t SET a = a + 1",
            ("t", true),
            join,
            "SELECT t.a + 1 AS a, t.k, u.name FROM t JOIN u ON t.k = u.k",
        ),
        // Rows go, the others stay in their partitions.
        (
            "DELETE FROM t WHERE a > 400",
            ("t", true),
            join,
            "SELECT t.a + 1 AS a, t.k, u.name FROM t JOIN u ON t.k = u.k \
             WHERE t.a + 1 <= 400 OR t.a IS NULL",
        ),
        // New rows go to partitions by rotation, not by key.
        (
            "INSERT INTO u VALUES (7, 'seven'), (8, 'eight'), (9, 'nine'), (10, 'ten')",
            ("u", false),
            join,
            "SELECT t.a + 1 AS a, t.k, u.name FROM t JOIN (SELECT k, name FROM u \
             UNION ALL VALUES (7, 'seven'), (8, 'eight'), (9, 'nine'), (10, 'ten')) u \
             ON t.k = u.k WHERE t.a + 1 <= 400 OR t.a IS NULL",
        ),
        // New keys would hash elsewhere, and the rows stay where they are: rows of one new
        // key come from several partitions.
        (
            "UPDATE t SET k = k % 7",
            ("t", false),
            group,
            "SELECT k % 7 AS k, count(*), sum(c) FROM t WHERE t.a + 1 <= 400 OR t.a IS NULL \
             GROUP BY k % 7",
        ),
    ];
    for (statement, (table, kept), sql, want) in steps {
        run_dirk(&s, statement, statement).await;
        let keys = s.table(table).unwrap().hash_keys().map(<[String]>::to_vec);
        assert_eq!(keys.is_some(), kept, "{table} after {statement}: {keys:?}");
        let what = format!("{sql} after {statement}");
        assert_same(
            &run_dirk(&s, sql, &what).await,
            &reference(want).await,
            false,
            &what,
        );
    }
}

/// A join of 64 tables nests 63 hash joins in one plan, deeper than protobuf decoders allow by
/// default (100 message levels, two per plan node): its fragments must still decode on the
/// workers. SQLite's `select5.test` joins up to 64 tables this way.
#[test]
fn a_join_of_sixty_four_tables_runs_as_on_datafusion() {
    // DataFusion's optimizer recurses once per join: in a debug build, planning the query
    // needs more than a test thread's 2 MiB of stack (the shell plans on its main thread).
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(join_of_sixty_four_tables())
        })
        .unwrap()
        .join()
        .unwrap();
}

async fn join_of_sixty_four_tables() {
    const TABLES: usize = 64;
    let table = |i: usize| {
        let a: Int64Array = (1..=10).map(Some).collect();
        let b: Int64Array = (1..=10)
            .map(|v| Some((v * 3 + i as i64) % 10 + 1))
            .collect();
        let x: StringArray = (1..=10).map(|v| Some(format!("t{i}-{v}"))).collect();
        RecordBatch::try_from_iter([
            (format!("a{i}"), Arc::new(a) as ArrayRef),
            (format!("b{i}"), Arc::new(b) as ArrayRef),
            (format!("x{i}"), Arc::new(x) as ArrayRef),
        ])
        .unwrap()
    };
    let from: Vec<String> = (0..TABLES).map(|i| format!("t{i}")).collect();
    let chain: Vec<String> = (1..TABLES).map(|i| format!("b{} = a{i}", i - 1)).collect();
    let sql = format!(
        "SELECT x0, x31, x63 FROM {} WHERE a0 <= 4 AND {}",
        from.join(", "),
        chain.join(" AND ")
    );
    let reference = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let s = super::harness::builder(2).partitions(3).build().unwrap();
    for i in 0..TABLES {
        let batch = table(i);
        let t = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
        reference
            .register_table(format!("t{i}"), Arc::new(t))
            .unwrap();
        s.create_table(&format!("t{i}"), vec![batch]).unwrap();
    }
    let want = reference.sql(&sql).await.unwrap().collect().await.unwrap();
    assert_eq!(want.iter().map(|b| b.num_rows()).sum::<usize>(), 4, "{sql}");
    let got = run_dirk(&s, &sql, "a join of 64 tables").await;
    assert_same(&got, &want, false, "a join of 64 tables");
}

/// The whole-plan statistics of `plan`, as DataFusion's optimizer computes them.
fn statistics(
    plan: &dyn datafusion::physical_plan::ExecutionPlan,
) -> Arc<datafusion::common::Statistics> {
    use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
    StatisticsContext::new()
        .compute(plan, &StatisticsArgs::new())
        .unwrap()
}

/// The table-wide statistics the planner sees on the scan of `column` in `sql`'s plan.
async fn scan_statistics(
    s: &Session,
    sql: &str,
    column: &str,
) -> datafusion::common::ColumnStatistics {
    use datafusion::physical_plan::ExecutionPlan;
    use dirk_dtable::exec::DTableScanExec;
    fn find(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<DTableScanExec>().is_some() {
            return Some(Arc::clone(plan));
        }
        plan.children().into_iter().find_map(find)
    }
    let df = s.sql(sql).await.unwrap().inner().clone();
    let plan = df.create_physical_plan().await.unwrap();
    let scan = find(&plan).unwrap_or_else(|| panic!("no scan in {sql}"));
    let i = scan.schema().index_of(column).unwrap();
    statistics(scan.as_ref()).column_statistics[i].clone()
}

/// The planner sees each table's bounds of its range-typed columns, inexact (DataFusion must
/// not answer `MIN`/`MAX` from them), and they follow writes: an in-place `UPDATE` and an
/// `INSERT` move them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_give_the_planner_column_bounds_that_follow_writes() {
    use datafusion::common::stats::Precision;
    use datafusion::common::ScalarValue;
    let s = session(2, 3);
    let bounds = |c: datafusion::common::ColumnStatistics| (c.min_value, c.max_value, c.null_count);
    let (_, t) = tables().remove(0);
    let a = t.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    let (min, max) = (
        arrow::compute::min(a).unwrap(),
        arrow::compute::max(a).unwrap(),
    );
    assert_eq!(
        bounds(scan_statistics(&s, "SELECT a FROM t", "a").await),
        (
            Precision::Inexact(ScalarValue::Int64(Some(min))),
            Precision::Inexact(ScalarValue::Int64(Some(max))),
            Precision::Inexact(arrow::array::Array::null_count(a)),
        )
    );
    let strings = scan_statistics(&s, "SELECT b FROM t", "b").await;
    assert_eq!(
        strings.min_value,
        Precision::Absent,
        "strings get no bounds"
    );
    run_dirk(
        &s,
        &format!("UPDATE t SET a = a + 100000 WHERE a = {max}"),
        "t",
    )
    .await;
    run_dirk(&s, "INSERT INTO t VALUES (-5000, 'red', 1.0, 3)", "t").await;
    let c = scan_statistics(&s, "SELECT a FROM t WHERE a > 0", "a").await;
    assert_eq!(
        c.min_value,
        Precision::Inexact(ScalarValue::Int64(Some(-5000)))
    );
    assert_eq!(
        c.max_value,
        Precision::Inexact(ScalarValue::Int64(Some(max + 100_000)))
    );
}

/// With bounds, DataFusion sizes a join by its keys' value ranges: `u` has 50 keys and `t`
/// 2000 rows over 60 keys, so `u JOIN t` has about 2000 rows. Without them it took each side's
/// row count as its count of distinct keys and estimated 50, small enough to broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_estimates_use_the_key_ranges() {
    use datafusion::physical_plan::joins::HashJoinExec;
    use datafusion::physical_plan::ExecutionPlan;
    fn join_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
        if plan.downcast_ref::<HashJoinExec>().is_some() {
            let stats = statistics(plan.as_ref());
            return stats.num_rows.get_value().copied();
        }
        plan.children().into_iter().find_map(join_rows)
    }
    let s = session(2, 3);
    let df = s
        .sql("SELECT t.a, u.name FROM u JOIN t ON t.k = u.k")
        .await
        .unwrap()
        .inner()
        .clone();
    let plan = df.create_physical_plan().await.unwrap();
    let rows = join_rows(&plan).expect("a hash join with an estimate");
    assert!(
        rows >= 1000,
        "estimated {rows} rows for a join of about 2000"
    );
}

#[tokio::test]
#[ignore = "debugging aid: prints a staged plan"]
async fn print_staged_plan() {
    let s = session(2, 3);
    let sql = std::env::var("DIRK_SQL").unwrap_or_else(|_| "SELECT 1".into());
    let df = s.sql(&sql).await.unwrap();
    println!("{}", df.explain().await.unwrap());
}
