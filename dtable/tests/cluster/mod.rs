//! What only a cluster has: the token, the protocol version, workers that die.

mod chaos;

use crate::dtable::compare::{assert_same, run_dirk, text_of, try_dirk};
use crate::dtable::harness::start;
use dirk_dtable::flight::{ClientOptions, RemoteWorker, PROTOCOL_VERSION};
use dirk_dtable::Session;
use dirk_engine::WorkerId;
use std::time::{Duration, Instant};

#[test]
fn a_session_without_the_right_token_is_refused() {
    let workers = start(2);
    let no_token = Session::builder().workers(workers.addresses()).build();
    let message = no_token.err().expect("refused").to_string();
    assert!(message.contains("requires a token"), "{message}");
    assert!(
        message.contains(&workers.addresses()[0]) || message.contains(&workers.addresses()[1]),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");

    let wrong = Session::builder()
        .workers(workers.addresses())
        .token("not-the-token")
        .build();
    let message = wrong.err().expect("refused").to_string();
    assert!(message.contains("wrong token"), "{message}");

    let right = Session::builder()
        .workers(workers.addresses())
        .token(workers.token())
        .build()
        .unwrap();
    assert_eq!(right.engine().workers().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_protocol_version_is_refused() {
    let workers = start(1);
    let options = ClientOptions {
        token: Some(workers.token().to_string()),
        ..ClientOptions::default()
    };
    let address = &workers.addresses()[0];
    let refused =
        RemoteWorker::connect_with_protocol(address, WorkerId(0), &options, PROTOCOL_VERSION + 1)
            .await
            .err()
            .expect("another version is refused")
            .to_string();
    assert!(
        refused.contains(&format!(
            "protocol version mismatch: the driver speaks Dirk protocol {}, this worker speaks {}",
            PROTOCOL_VERSION + 1,
            PROTOCOL_VERSION
        )),
        "{refused}"
    );
    assert!(refused.contains(address.as_str()), "{refused}");
    RemoteWorker::connect(address, WorkerId(0), &options)
        .await
        .expect("the same version is accepted");
}

#[test]
fn an_unreachable_worker_is_a_clear_error_at_connect_time() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let message = Session::builder()
        .workers([format!("127.0.0.1:{port}").as_str()])
        .build()
        .err()
        .expect("nobody listens there")
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}

/// A worker process killed while no call to it is in flight is declared lost at the next
/// heartbeat (it refuses connections), not after the 5 s a hung one is given.
#[test]
fn a_killed_idle_worker_is_declared_lost_at_the_next_heartbeat() {
    let mut workers = start(2);
    let s = Session::builder()
        .workers(workers.addresses())
        .token(workers.token())
        .build()
        .unwrap();
    workers.kill(1);
    let killed = Instant::now();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|n: &dirk_engine::Notice| n.to_string().contains("its process is gone"))
    {
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "{:?}: {seen:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
        seen.extend(s.engine().take_notices());
    }
    assert_eq!(s.engine().workers().len(), 1);
}

/// A session on `workers` (6 partitions per table) with TPC-H SF 0.01 loaded.
async fn tpch_on(workers: &dirk_dtable::flight::LocalWorkers) -> std::sync::Arc<Session> {
    let s = Session::builder()
        .workers(workers.addresses())
        .token(workers.token())
        .partitions(6)
        .build()
        .unwrap();
    s.load_tpch(0.01).await.unwrap();
    std::sync::Arc::new(s)
}

/// The long query of [`a_long_query_on_three_workers`]: a join of `lineitem` with itself with
/// hundreds of millions of output rows, seconds of work on every worker.
const LONG_QUERY: &str = "SELECT CAST(sum(a.l_quantity * b.l_quantity) AS DECIMAL(38, 4)) AS v \
     FROM lineitem a JOIN lineitem b ON a.l_suppkey % 10 = b.l_suppkey % 10";

/// Its answer, from DataFusion on one node by a cheaper road: the sum over pairs in one group
/// is the square of the group's sum.
async fn long_query_answer() -> String {
    let reference = crate::dtable::tpch::reference_at(0.01).await;
    let batches = reference
        .sql(
            "SELECT CAST(sum(s * s) AS DECIMAL(38, 4)) AS v FROM \
             (SELECT sum(l_quantity) AS s FROM lineitem GROUP BY l_suppkey % 10)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    text_of(&batches)
}

/// Three worker processes, a session over them with TPC-H SF 0.01, and [`LONG_QUERY`] running
/// on them, 700 ms in; the query's task yields its result and how long it ran.
async fn a_long_query_on_three_workers() -> (
    dirk_dtable::flight::LocalWorkers,
    std::sync::Arc<Session>,
    tokio::task::JoinHandle<(
        dirk_dtable::Result<Vec<arrow::array::RecordBatch>>,
        Duration,
    )>,
) {
    let workers = start(3);
    let s = tpch_on(&workers).await;
    let q = s.clone();
    let query = tokio::spawn(async move {
        let started = Instant::now();
        let r = try_dirk(&q, LONG_QUERY).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    (workers, s, query)
}

/// How many tasks the scheduler ran again, and how many it ran to rebuild lost chunks.
fn retried_and_recomputed(s: &Session) -> (usize, usize) {
    let log = s.engine().event_log();
    let retried = log
        .records
        .iter()
        .filter(|r| matches!(r.status, dirk_engine::TaskStatus::Retried(_)))
        .count();
    let recomputed = log
        .records
        .iter()
        .filter(|r| r.name.starts_with(dirk_engine::RECOMPUTE_PREFIX))
        .count();
    (retried, recomputed)
}

/// After a worker was lost: the session has `workers` workers, `orders` (a third of whose
/// partitions were on the lost worker) was rebuilt and reads as DataFusion's, and a mutation
/// works.
async fn the_session_goes_on(s: &Session, workers: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.engine().workers().len() != workers {
        assert!(
            Instant::now() < deadline,
            "{:?}, not {workers} workers",
            s.engine().workers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reference = crate::dtable::tpch::reference_at(0.01).await;
    let statements = [
        "SELECT o_orderstatus, count(*), sum(o_totalprice) FROM orders GROUP BY 1",
        "SELECT count(*), sum(l_extendedprice) FROM lineitem WHERE l_shipmode = 'AIR'",
    ];
    for sql in statements {
        let got = tokio::time::timeout(Duration::from_secs(60), try_dirk(s, sql))
            .await
            .expect("never hangs")
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
        assert_same(&got, &want, false, sql);
    }
    run_dirk(
        s,
        "UPDATE orders SET o_totalprice = 0 WHERE o_orderkey % 3 = 0",
        "update",
    )
    .await;
    let got = run_dirk(
        s,
        "SELECT count(*) FROM orders WHERE o_totalprice = 0",
        "after",
    )
    .await;
    let want = reference
        .sql("SELECT count(*) FROM orders WHERE o_orderkey % 3 = 0 OR o_totalprice = 0")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&got, &want, false, "updated");
}

/// A worker killed in the middle of a query costs time, not the answer: its tasks run again
/// elsewhere, the chunks it held (table partitions and the query's own) are rebuilt from their
/// lineage, and the answer equals DataFusion's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_query_costs_time_not_the_answer() {
    let (mut workers, s, query) = a_long_query_on_three_workers().await;
    workers.kill(2);
    let (result, ran) = tokio::time::timeout(Duration::from_secs(180), query)
        .await
        .expect("a lost worker never hangs a query")
        .unwrap();
    let got = result.unwrap_or_else(|e| panic!("the query fails after {ran:?}: {e}"));
    assert_eq!(text_of(&got), long_query_answer().await);
    let (retried, recomputed) = retried_and_recomputed(&s);
    assert!(
        retried + recomputed > 0,
        "the kill came after the query: make it longer"
    );
    the_session_goes_on(&s, 2).await;
}

/// A worker that stops answering without closing its connections (SIGSTOP: a hung machine) is
/// declared lost by the heartbeat and handled as a dead one; when it answers again, what it
/// reports about the tasks taken from it is refused, and it rejoins as a new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_declared_lost_and_its_work_done_elsewhere() {
    let (mut workers, s, query) = a_long_query_on_three_workers().await;
    workers.pause(1);
    let (result, ran) = tokio::time::timeout(Duration::from_secs(180), query)
        .await
        .expect("a hung worker never hangs a query")
        .unwrap();
    let got = result.unwrap_or_else(|e| panic!("the query fails after {ran:?}: {e}"));
    assert_eq!(text_of(&got), long_query_answer().await);
    workers.resume(1);
    the_session_goes_on(&s, 3).await;
    let notices = s.engine().take_notices();
    assert!(
        notices.iter().any(|n| matches!(n,
            dirk_engine::Notice::Rejoined { was, worker, .. }
                if *was == WorkerId(1) && *worker == WorkerId(3))),
        "{notices:?}"
    );
}

/// A running session takes one more worker process: the first worker and it learn of each
/// other, a table made afterwards has partitions there, and a join over a table on the first
/// and one on both answers as DataFusion does. An embedded session has no processes to add to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_added_to_a_running_session_takes_partitions_and_work() {
    let workers = start(2);
    let addresses = workers.addresses();
    let s = Session::builder()
        .workers(vec![addresses[0].clone()])
        .token(workers.token())
        .partitions(4)
        .build()
        .unwrap();
    run_dirk(
        &s,
        "CREATE TABLE early AS SELECT value AS v FROM generate_series(1, 5000)",
        "a table before",
    )
    .await;
    let id = s.add_worker(&addresses[1]).await.unwrap();
    assert_eq!(id, WorkerId(1));
    assert_eq!(s.engine().workers().len(), 2);
    run_dirk(
        &s,
        "CREATE TABLE late AS SELECT value AS v, value % 7 AS k FROM generate_series(1, 200000)",
        "a table after",
    )
    .await;
    let on_new: usize = s
        .engine()
        .worker_status()
        .iter()
        .filter(|w| w.id == id)
        .map(|w| w.chunks)
        .sum();
    assert!(
        on_new > 0,
        "no partition of the new table is on the new worker"
    );
    let sql = "SELECT l.k, count(*) AS n, sum(l.v) AS total FROM late l JOIN early e ON l.v = e.v \
               GROUP BY l.k ORDER BY l.k";
    let got = run_dirk(&s, sql, "a join over both workers").await;
    let ctx = datafusion::prelude::SessionContext::new();
    let want = ctx
        .sql(
            "SELECT value % 7 AS k, count(*) AS n, sum(value) AS total \
             FROM generate_series(1, 5000) GROUP BY value % 7 ORDER BY k",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&got, &want, true, "a join over both workers");

    let embedded = Session::builder().workers(2).build().unwrap();
    let e = embedded
        .add_worker(&addresses[1])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("embedded session"), "{e}");
}

/// A worker killed while a `COPY` to a bucket runs: either the statement fails and nothing is
/// visible under the output (staged files included), or it succeeds and the output holds
/// every row once. The writing tasks run at most once (a second run would stage its files
/// beside the first's); the tasks before them run again as any others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_copy_leaves_all_or_nothing() {
    use crate::dtable::objectstore::{objects, server};
    let Some(server) = server() else { return };
    let bucket = "killed-copy";
    server.create_bucket(bucket);
    let mut workers = start(3);
    let s = tpch_on(&workers).await;
    let q = s.clone();
    let query = "SELECT a.l_orderkey, b.l_quantity FROM lineitem a \
                 JOIN lineitem b ON a.l_orderkey = b.l_orderkey";
    let copy = format!(
        "COPY ({query}) TO 's3://{bucket}/out/' STORED AS PARQUET {}",
        server.options()
    );
    let run = tokio::spawn(async move { try_dirk(&q, &copy).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    workers.kill(2);
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("a dead worker never hangs a COPY")
        .unwrap();
    let names = objects(server, bucket, "out").await;
    let Ok(_) = result else {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("lost"), "{message}");
        assert_eq!(names, Vec::<String>::new(), "a failed COPY left objects");
        return;
    };
    assert!(names.iter().any(|n| n == "out/_SUCCESS"), "{names:?}");
    let summary = "SELECT count(*) AS n, sum(l_quantity) AS q FROM ";
    let reader = datafusion::prelude::SessionContext::new();
    let url = url::Url::parse(&format!("s3://{bucket}")).unwrap();
    reader.register_object_store(&url, server.store(bucket));
    reader
        .sql(&format!(
            "CREATE EXTERNAL TABLE out STORED AS PARQUET LOCATION 's3://{bucket}/out/'"
        ))
        .await
        .unwrap();
    let back = reader.sql(&format!("{summary} out")).await.unwrap();
    let back = back.collect().await.unwrap();
    let reference = crate::dtable::tpch::reference_at(0.01).await;
    let want = reference
        .sql(&format!("{summary} ({query})"))
        .await
        .unwrap();
    assert_same(
        &back,
        &want.collect().await.unwrap(),
        false,
        "every row once",
    );
}
