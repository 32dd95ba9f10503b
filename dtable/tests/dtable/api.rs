//! The DataFrame API, table layout (repartition, pinning), EXPLAIN, SET and the memory limit.

use super::compare::{assert_same, run_dirk, text_of};
use super::queries::{reference, session};
use dirk_dtable::prelude::*;
use dirk_engine::WorkerId;

/// Each DataFrame chain, and the SQL that means the same, run by DataFusion on one node.
async fn chains(s: &Session) -> Vec<(DataFrame, &'static str, bool)> {
    let t = || s.table_df("t");
    let u = || s.table_df("u");
    vec![
        (
            t().await
                .unwrap()
                .filter(col("a").gt(lit(100)).and(col("b").not_eq(lit("red"))))
                .unwrap()
                .with_column("a2", col("a") * lit(2))
                .unwrap()
                .select(vec![col("a"), col("a2"), col("b")])
                .unwrap(),
            "SELECT a, a * 2 AS a2, b FROM t WHERE a > 100 AND b <> 'red'",
            false,
        ),
        (
            t().await
                .unwrap()
                .group_by(vec![col("b")])
                .agg(vec![
                    count(lit(1)).alias("n"),
                    sum(col("a")).alias("s"),
                    avg(col("c")).alias("m"),
                ])
                .unwrap()
                .sort(vec![col("b").sort(true, true)])
                .unwrap(),
            "SELECT b, count(1) AS n, sum(a) AS s, avg(c) AS m FROM t GROUP BY b \
             ORDER BY b NULLS FIRST",
            true,
        ),
        (
            t().await
                .unwrap()
                .sort(vec![
                    col("a").sort(false, false),
                    col("c").sort(true, false),
                    col("b").sort(true, false),
                ])
                .unwrap()
                .limit(5, Some(20))
                .unwrap()
                .select_columns(&["a", "b", "c"])
                .unwrap(),
            "SELECT a, b, c FROM t ORDER BY a DESC NULLS LAST, c, b LIMIT 20 OFFSET 5",
            true,
        ),
        (
            t().await
                .unwrap()
                .select_columns(&["b"])
                .unwrap()
                .distinct()
                .unwrap(),
            "SELECT DISTINCT b FROM t",
            false,
        ),
        (
            t().await
                .unwrap()
                .filter(col("a").gt(lit(600)))
                .unwrap()
                .select(vec![col("b").alias("x")])
                .unwrap()
                .union(
                    u().await
                        .unwrap()
                        .select(vec![col("name").alias("x")])
                        .unwrap(),
                )
                .unwrap(),
            "SELECT b AS x FROM t WHERE a > 600 UNION ALL SELECT name AS x FROM u",
            false,
        ),
        (
            t().await
                .unwrap()
                .filter(col("a").is_not_null().and(col("c").is_not_null()))
                .unwrap()
                .window(vec![row_number()
                    .partition_by(vec![col("k")])
                    .order_by(vec![col("a").sort(true, true), col("c").sort(true, true)])
                    .build()
                    .unwrap()
                    .alias("rn")])
                .unwrap()
                .select_columns(&["k", "a", "rn"])
                .unwrap(),
            "SELECT k, a, row_number() OVER (PARTITION BY k ORDER BY a, c) AS rn FROM t \
             WHERE a IS NOT NULL AND c IS NOT NULL",
            false,
        ),
    ]
}

async fn joins(s: &Session) -> Vec<(DataFrame, String)> {
    let mut out = Vec::new();
    for (how, sql) in [
        (JoinType::Inner, "JOIN"),
        (JoinType::Left, "LEFT JOIN"),
        (JoinType::Right, "RIGHT JOIN"),
        (JoinType::Full, "FULL JOIN"),
    ] {
        let left = s
            .table_df("t")
            .await
            .unwrap()
            .filter(col("a").gt(lit(400)))
            .unwrap()
            .select(vec![col("k").alias("tk"), col("a")])
            .unwrap();
        let right = s
            .table_df("u")
            .await
            .unwrap()
            .filter(col("k").lt(lit(40)))
            .unwrap();
        out.push((
            left.join(right, how, &["tk"], &["k"]).unwrap(),
            format!(
                "SELECT t.k AS tk, t.a, u.k, u.name FROM (SELECT * FROM t WHERE a > 400) t \
                 {sql} (SELECT * FROM u WHERE k < 40) u ON t.k = u.k"
            ),
        ));
    }
    for (how, sql) in [(JoinType::LeftSemi, "IN"), (JoinType::LeftAnti, "NOT IN")] {
        let left = s.table_df("u").await.unwrap();
        let right = s
            .table_df("t")
            .await
            .unwrap()
            .filter(col("a").gt(lit(650)))
            .unwrap()
            .select(vec![col("k").alias("tk")])
            .unwrap();
        out.push((
            left.join(right, how, &["k"], &["tk"]).unwrap(),
            format!("SELECT * FROM u WHERE k {sql} (SELECT k FROM t WHERE a > 650)"),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataframe_chains_equal_datafusion_sql() {
    for (workers, partitions) in [(1, 1), (2, 3), (4, 8)] {
        let s = session(workers, partitions);
        for (df, sql, ordered) in chains(&s).await {
            let want = reference(sql).await;
            let got = df.collect().await.unwrap();
            assert_same(
                &got,
                &want,
                ordered,
                &format!("{workers}x{partitions}: {sql}"),
            );
        }
        for (df, sql) in joins(&s).await {
            let want = reference(&sql).await;
            let got = df.collect().await.unwrap();
            assert_same(
                &got,
                &want,
                false,
                &format!("{workers}x{partitions}: {sql}"),
            );
        }
        let n = s.table_df("t").await.unwrap().count().await.unwrap();
        assert_eq!(n, 2000);
        let text = s
            .table_df("u")
            .await
            .unwrap()
            .to_table_string(3)
            .await
            .unwrap();
        assert_eq!(text.lines().count(), 7, "header, rules and 3 rows:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataframes_of_two_sessions_do_not_mix() {
    let (s1, s2) = (session(1, 1), session(1, 1));
    let a = s1.table_df("u").await.unwrap();
    let b = s2.table_df("u").await.unwrap();
    let e = a.union(b).err().expect("two sessions").to_string();
    assert!(e.contains("two different sessions"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_and_repartition_by_change_the_layout_not_the_rows() {
    let s = session(3, 2);
    let before = run_dirk(&s, "SELECT * FROM t", "before").await;
    let t = s.repartition("t", 5).await.unwrap();
    assert_eq!(t.num_partitions(), 5);
    assert_eq!(t.num_rows(), 2000);
    let owners: std::collections::BTreeSet<_> = t.chunks().map(|c| c.owner).collect();
    assert!(owners.len() > 1, "spread over workers: {owners:?}");
    assert_same(
        &run_dirk(&s, "SELECT * FROM t", "after").await,
        &before,
        false,
        "repartition",
    );

    let t = s.repartition_by("t", &["k"], 4).await.unwrap();
    assert_eq!(t.num_partitions(), 4);
    assert_eq!(t.num_rows(), 2000);
    // Equal keys share a partition: no key is in two partitions.
    let mut seen = std::collections::HashMap::new();
    for (p, part) in t.partitions().iter().enumerate() {
        for c in part {
            for b in s.engine().fetch(c).unwrap().batches() {
                let k = b
                    .column(3)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                for v in k.iter().flatten() {
                    assert_eq!(*seen.entry(v).or_insert(p), p, "key {v} in two partitions");
                }
            }
        }
    }
    assert_same(
        &run_dirk(&s, "SELECT * FROM t", "after").await,
        &before,
        false,
        "repartition_by",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_table_stays_on_its_worker_and_its_scans_run_there() {
    let s = session(3, 4);
    let w = WorkerId(2);
    let t = s.pin_table("t", w).unwrap();
    assert!(t.chunks().all(|c| c.owner == w));
    let batches = run_dirk(
        &s,
        "EXPLAIN ANALYZE SELECT b, count(*) FROM t GROUP BY b",
        "analyze",
    )
    .await;
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let stage0 = text
        .lines()
        .find(|l| l.contains("-- workers="))
        .expect("stage 0 stats");
    assert!(stage0.contains("workers={2}"), "{text}");
    assert!(s.pin_table("t", WorkerId(9)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_verbose_and_analyze() {
    let s = session(2, 3);
    let q = "SELECT t.k, count(*) FROM t JOIN u ON t.k = u.k GROUP BY t.k";
    let plain = text_of(&run_dirk(&s, &format!("EXPLAIN {q}"), "explain").await);
    assert!(plain.contains("logical_plan") && plain.contains("dirk_stages"));
    assert!(
        plain.contains("Stage 0") && plain.contains("[final]"),
        "{plain}"
    );
    let verbose = text_of(&run_dirk(&s, &format!("EXPLAIN VERBOSE {q}"), "verbose").await);
    for part in ["initial_logical_plan", "physical_plan", "dirk_stages"] {
        assert!(verbose.contains(part), "{part} in {verbose}");
    }
    let analyze = text_of(&run_dirk(&s, &format!("EXPLAIN ANALYZE {q}"), "analyze").await);
    let groups = run_dirk(&s, q, "query").await;
    let rows: usize = groups.iter().map(|b| b.num_rows()).sum();
    assert!(
        analyze.contains("bytes_moved=")
            && analyze.contains("fetch_wait=")
            && analyze.contains("task_cpu="),
        "{analyze}"
    );
    assert!(
        analyze.contains(&format!("{rows} rows out")),
        "total rows {rows} in {analyze}"
    );
    let stages = analyze.matches("-- workers=").count();
    assert!(
        stages >= 3,
        "a join and an aggregation make several stages: {analyze}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_reaches_the_tasks_and_cannot_turn_on_shared_state() {
    let s = session(2, 3);
    let dir = std::env::temp_dir().join(format!("dirk-set-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.csv");
    let mut csv = String::from("n\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i}\n"));
    }
    std::fs::write(&path, csv).unwrap();
    let path = path.display().to_string();
    let read = || async {
        s.read_csv(&path, CsvReadOptions::new())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    };
    // The CSV reader in each task makes batches of the batch size its task was given.
    assert!(read().await.iter().any(|b| b.num_rows() > 10));
    run_dirk(&s, "SET datafusion.execution.batch_size = 10", "set").await;
    let got = read().await;
    assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
    assert!(
        got.iter().all(|b| b.num_rows() <= 10),
        "batches of at most 10 rows"
    );
    let e = s
        .sql("SET datafusion.optimizer.enable_dynamic_filter_pushdown = true")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("share memory"), "{e}");
    run_dirk(&s, "RESET datafusion.execution.batch_size", "reset").await;
    assert!(read().await.iter().any(|b| b.num_rows() > 10));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_applies_to_each_task() {
    // 12 MiB per task: room for a partition of the table (about 6 MiB) and a small aggregate,
    // not for a hash table over half of it.
    let s = super::harness::builder(2)
        .partitions(2)
        .memory(24 << 20)
        .build()
        .unwrap();
    run_dirk(
        &s,
        "CREATE TABLE big AS SELECT value AS v, value % 1000 AS k, repeat('x', 40) AS pad \
         FROM generate_series(1, 300000)",
        "setup",
    )
    .await;
    // A hash join's build side cannot spill: beyond its share of memory it fails, cleanly.
    let e = match s
        .sql("SELECT count(*) FROM big a JOIN big b ON a.v = b.v AND a.pad = b.pad")
        .await
    {
        Ok(df) => df.collect().await.err(),
        Err(e) => Some(e),
    }
    .expect("over the limit")
    .to_string();
    assert!(e.contains("Resources exhausted"), "{e}");
    // The session is still usable.
    let got = run_dirk(&s, "SELECT count(*) FROM big WHERE k = 7", "after").await;
    assert_eq!(got[0].num_rows(), 1);
}

/// A session handle a server can keep and hand to requests.
fn assert_shareable<T: Clone + Send + Sync + 'static>(_: &T) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_streams_by_partition_and_a_dropped_stream_frees_its_chunks() {
    use futures::TryStreamExt as _;
    let s = session(2, 4);
    assert_shareable(&s);
    let tables = super::harness::held_chunks(&s);
    // Four final partitions (no ORDER BY: a repartitioned aggregate stays split).
    let sql = "SELECT k, count(*) AS n, sum(a) AS total FROM t GROUP BY k";
    let df = s.sql(sql).await.unwrap();
    // The DataFrame owns its session handle: the session's other handles may go.
    let handle = s.clone();
    drop(handle);
    let stream = df.execute_stream().await.unwrap();
    let schema = stream.schema();
    let got: Vec<_> = stream.try_collect().await.unwrap();
    assert!(got.iter().all(|b| b.schema() == schema));
    assert_same(&got, &reference(sql).await, false, "streamed");
    super::harness::assert_workers_hold(&s, tables, "after a stream read to its end").await;

    // A stream dropped after its first batch cancels the rest and frees what it made.
    let mut stream = s
        .sql("SELECT a.k, count(*) FROM t a JOIN t b ON a.k = b.k GROUP BY a.k")
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap();
    assert!(stream.try_next().await.unwrap().is_some());
    drop(stream);
    super::harness::assert_workers_hold(&s, tables, "after a stream dropped half-read").await;
    // And collect() is the same stream, read whole.
    let got = s.sql(sql).await.unwrap().collect().await.unwrap();
    assert_same(&got, &reference(sql).await, false, "collected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whose_failure_they_are_and_where_they_came_from() {
    use dirk_engine::ErrorKind;
    let s = session(2, 3);
    // Wrong SQL, an unknown table, a value that does not cast on a worker: the user's.
    for sql in [
        "SELEC 1",
        "SELECT * FROM no_such_table",
        "SELECT CAST(b AS BIGINT) FROM t WHERE b IS NOT NULL",
    ] {
        let e = super::compare::try_dirk(&s, sql).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::User, "{sql}: {e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }
    // The cast failed in a task, on a worker: the error names both.
    let e = super::compare::try_dirk(&s, "SELECT CAST(b AS BIGINT) FROM t WHERE b IS NOT NULL")
        .await
        .unwrap_err();
    assert!(e.task().is_some(), "{e:?}");
    assert!(
        e.worker()
            .is_some_and(|w| s.engine().workers().contains(&w)),
        "{e:?}"
    );
}
