//! What only a cluster has: the token, the protocol version, workers that die.

use crate::dtable::compare::{assert_same, run_dirk, try_dirk};
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

/// Three worker processes, a session over them with TPC-H SF 0.01, and a query running on them
/// for a few seconds (a join with hundreds of millions of output rows: seconds of work on every
/// worker), 700 ms in; the query's task yields its result and how long it ran.
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
        let r = try_dirk(
            &q,
            "SELECT sum(a.l_quantity * b.l_quantity) FROM lineitem a \
             JOIN lineitem b ON a.l_suppkey % 10 = b.l_suppkey % 10",
        )
        .await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    (workers, s, query)
}

/// A worker that stops answering without closing its connections (SIGSTOP: a hung machine) is
/// declared lost by the heartbeat, and the query fails instead of waiting for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_declared_lost_and_the_query_fails_promptly() {
    let (mut workers, _s, query) = a_long_query_on_three_workers().await;
    workers.pause(1);
    let paused = Instant::now();
    let (result, _) = tokio::time::timeout(Duration::from_secs(60), query)
        .await
        .expect("a hung worker never hangs a query")
        .unwrap();
    let error = result.expect_err("worker 1 hangs");
    assert_eq!(error.kind(), dirk_engine::ErrorKind::Retryable, "{error:?}");
    let message = error.to_string();
    assert!(message.contains("worker 1"), "names the worker: {message}");
    assert!(message.contains("lost"), "{message}");
    // The heartbeat gives up after 5 s without an answer.
    assert!(
        paused.elapsed() < Duration::from_secs(20),
        "{:?}",
        paused.elapsed()
    );
    workers.resume(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_query_is_a_clear_error_and_the_session_goes_on() {
    let (mut workers, s, query) = a_long_query_on_three_workers().await;
    workers.kill(2);
    let killed = Instant::now();
    let (result, ran) = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .expect("a dead worker never hangs a query")
        .unwrap();
    let error = result.err().unwrap_or_else(|| {
        panic!("the query finished in {ran:?}, before the kill: make it longer")
    });
    // A lost worker is a failure worth retrying, not the user's.
    assert_eq!(error.kind(), dirk_engine::ErrorKind::Retryable, "{error:?}");
    let message = error.to_string();
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "{:?}",
        killed.elapsed()
    );
    assert!(message.contains("worker 2"), "names the worker: {message}");
    assert!(message.contains("lost"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    // The query's tasks on the other workers were cancelled: they stop between batches
    // instead of grinding through seconds of a join nobody will read (asked of the workers).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = s.engine().worker_status();
        if status.iter().all(|w| w.running == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks still run on the workers left, 3 s after the query failed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The session goes on with the two workers left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.engine().workers().len() != 2 {
        assert!(Instant::now() < deadline, "w2 is never declared lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same statements on DataFusion on one node give the expected answer.
    let create = "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) v(k, name)";
    let select = "SELECT k, upper(name) AS n FROM t WHERE k > 1 ORDER BY k";
    run_dirk(&s, create, "create").await;
    let got = run_dirk(&s, select, "after").await;
    let reference = datafusion::prelude::SessionContext::new();
    reference
        .sql(create)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let expected = reference
        .sql(select)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&got, &expected, true, "after the loss");
    // A table that had partitions on the lost worker says so, promptly.
    let lost = tokio::time::timeout(
        Duration::from_secs(15),
        try_dirk(&s, "SELECT sum(o_totalprice) FROM orders"),
    )
    .await
    .expect("never hangs");
    let lost = lost.expect_err("a third of orders is gone");
    assert_eq!(lost.kind(), dirk_engine::ErrorKind::Retryable, "{lost:?}");
    let message = lost.to_string();
    assert!(message.contains("lost with worker 2"), "{message}");
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

/// A worker killed while a `COPY` to a bucket runs: the statement fails and nothing is visible
/// under the output, staged files included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_copy_leaves_nothing_visible() {
    use crate::dtable::objectstore::{objects, server};
    let Some(server) = server() else { return };
    let bucket = "killed-copy";
    server.create_bucket(bucket);
    let mut workers = start(3);
    let s = tpch_on(&workers).await;
    let q = s.clone();
    let copy = format!(
        "COPY (SELECT a.l_orderkey, b.l_quantity FROM lineitem a \
         JOIN lineitem b ON a.l_suppkey % 10 = b.l_suppkey % 10) \
         TO 's3://{bucket}/out/' STORED AS CSV {}",
        server.options()
    );
    let run = tokio::spawn(async move { try_dirk(&q, &copy).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    workers.kill(2);
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("a dead worker never hangs a COPY")
        .unwrap();
    let message = result
        .expect_err("worker 2 was killed mid-COPY")
        .to_string();
    assert!(message.contains("lost"), "{message}");
    assert_eq!(
        objects(server, bucket, "out").await,
        Vec::<String>::new(),
        "a failed COPY left objects"
    );
}
