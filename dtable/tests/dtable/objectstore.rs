//! External tables in an S3 bucket: a real S3-compatible server (moto) on loopback, TPC-H at SF
//! 0.01 written into it as Parquet and CSV, read through Dirk (each worker reads its own splits
//! straight from the bucket) and compared with DataFusion on one node over the same objects; the
//! credentials given in `OPTIONS` reach the workers and never show; a missing bucket, an
//! unreachable endpoint and a corrupt object are one clear line.
//!
//! The server is `moto[server]` from PyPI, which `.ci/run` installs into
//! `$HOME/.cache/dirk/moto` (or `DIRK_MOTO_DIR`). Without it these tests say so and pass,
//! unless `DIRK_REQUIRE_S3=1` (CI sets it).

use super::compare::{assert_same, run_datafusion, run_dirk, storage_read, text_of, try_dirk};
use arrow::array::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::tpch::{QUERIES, TABLES};
use dirk_dtable::Session;
use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const REGION: &str = "us-east-1";
const KEY_ID: &str = "dirk-test-key";
/// The secret the tests look for where it must not be.
const SECRET: &str = "dirk-s3cr3t-value-9f4e";

/// A moto S3 server on a free loopback port, stopped when the test binary ends.
pub(crate) struct S3Server {
    endpoint: String,
    _process: ChildGuard,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_dir() -> std::path::PathBuf {
    match std::env::var_os("DIRK_MOTO_DIR") {
        Some(d) => d.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/dirk/moto"),
    }
}

/// The shared server, or `None` (with a message) where moto is not installed and the tests
/// are not required to run.
pub(crate) fn server() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    SERVER.get_or_init(start_server).as_ref()
}

fn start_server() -> Option<S3Server> {
    let required = std::env::var("DIRK_REQUIRE_S3").is_ok_and(|v| v == "1");
    let dir = moto_dir();
    let python_path = |c: &mut Command| {
        c.env("PYTHONPATH", &dir);
    };
    let mut probe = Command::new("python3");
    python_path(&mut probe);
    let found = probe
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = format!(
            "moto is not installed in {} (python3 -m pip install --target {} 'moto[server]'): \
             the S3 tests are skipped",
            dir.display(),
            dir.display()
        );
        assert!(!required, "DIRK_REQUIRE_S3=1 but {message}");
        eprintln!("{message}");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new("python3");
    python_path(&mut command);
    let child = command
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(port, "GET", "/").is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not answer on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(S3Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        _process: guard,
    })
}

/// One unsigned HTTP request (moto takes bucket creation without a signature); the status line.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

impl S3Server {
    fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub(crate) fn create_bucket(&self, bucket: &str) {
        let status = http(self.port(), "PUT", &format!("/{bucket}")).unwrap();
        assert!(status.contains("200"), "create bucket {bucket}: {status}");
    }

    pub(crate) fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region(REGION)
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .build()
                .unwrap(),
        )
    }

    /// The `OPTIONS` clause that points a table at this server.
    pub(crate) fn options(&self) -> String {
        format!(
            "OPTIONS ('aws.endpoint' '{}', 'aws.allow_http' 'true', 'aws.region' '{REGION}', \
             'aws.access_key_id' '{KEY_ID}', 'aws.secret_access_key' '{SECRET}')",
            self.endpoint
        )
    }
}

fn parquet_bytes(batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(4096))
        .build();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    out
}

fn csv_bytes(batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(&mut out);
    for b in batches {
        w.write(b).unwrap();
    }
    drop(w);
    out
}

/// TPC-H SF 0.01 in bucket `bucket`, once per test binary: `tpch/<table>/part-<p>.parquet` (two
/// parts per table) and `csv/lineitem/part-<p>.csv`.
async fn tpch_bucket(server: &S3Server, bucket: &str) -> Vec<(String, Vec<RecordBatch>)> {
    server.create_bucket(bucket);
    let store = server.store(bucket);
    let gen = Session::builder().workers(1).partitions(2).build().unwrap();
    gen.load_tpch(0.01).await.unwrap();
    let mut tables = Vec::new();
    for t in TABLES {
        let table = gen.table(t).unwrap();
        let mut all = Vec::new();
        for (p, part) in table.partitions().iter().enumerate() {
            let batches: Vec<RecordBatch> = part
                .iter()
                .flat_map(|c| gen.engine().fetch(c).unwrap().batches().to_vec())
                .filter(|b| b.num_rows() > 0)
                .collect();
            if batches.is_empty() {
                continue;
            }
            let path = ObjectPath::from(format!("tpch/{t}/part-{p}.parquet"));
            store
                .put(&path, PutPayload::from(parquet_bytes(&batches)))
                .await
                .unwrap();
            if t == "lineitem" {
                let path = ObjectPath::from(format!("csv/{t}/part-{p}.csv"));
                store
                    .put(&path, PutPayload::from(csv_bytes(&batches)))
                    .await
                    .unwrap();
            }
            all.extend(batches);
        }
        tables.push((t.to_string(), all));
    }
    tables
}

/// DataFusion on one node over the same objects.
async fn reference(server: &S3Server, bucket: &str) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let url = url::Url::parse(&format!("s3://{bucket}")).unwrap();
    ctx.register_object_store(&url, server.store(bucket));
    for t in TABLES {
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION 's3://{bucket}/tpch/{t}/'"
        ))
        .await
        .unwrap();
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_from_an_s3_bucket_equals_datafusion_and_keeps_the_secret() {
    let Some(server) = server() else { return };
    let bucket = "tpch-read";
    tpch_bucket(server, bucket).await;
    let reference = reference(server, bucket).await;
    let s = super::harness::builder(3).partitions(3).build().unwrap();
    for t in TABLES {
        run_dirk(
            &s,
            &format!(
                "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION 's3://{bucket}/tpch/{t}/' {}",
                server.options()
            ),
            t,
        )
        .await;
    }
    // The tables stay in the bucket: each query's tasks read their splits, spread over the
    // workers, and only the columns the query needs.
    assert!(
        s.table("lineitem").is_err(),
        "external tables are not resident"
    );
    let analyzed = text_of(
        &run_dirk(
            &s,
            "EXPLAIN ANALYZE SELECT sum(l_quantity) FROM lineitem",
            "analyze",
        )
        .await,
    );
    let scan = analyzed
        .lines()
        .find(|l| l.contains("storage_bytes="))
        .unwrap_or_else(|| panic!("no storage read counted: {analyzed}"));
    let workers = scan
        .split("workers={")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(
        workers.contains(','),
        "lineitem read on one worker only: {scan}"
    );
    let stored: u64 = server
        .store(bucket)
        .list(Some(&ObjectPath::from("tpch/lineitem")))
        .map_ok(|m| m.size)
        .try_collect::<Vec<u64>>()
        .await
        .unwrap()
        .iter()
        .sum();
    let (read, requests) = storage_read(&analyzed);
    assert!(read > 0 && requests > 0, "{scan}");
    assert!(
        read < stored / 4,
        "one column of sixteen read, not the files: {read} of {stored} bytes: {scan}"
    );
    for (i, sql) in QUERIES.iter().enumerate() {
        let what = format!("q{:02} from s3", i + 1);
        let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
        let got = run_dirk(&s, sql, &what).await;
        assert_same(&got, &want, true, &what);
    }

    // The same bucket as CSV.
    run_dirk(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE lineitem_csv STORED AS CSV LOCATION 's3://{bucket}/csv/lineitem/' \
             OPTIONS ('format.has_header' 'true', 'aws.endpoint' '{}', 'aws.allow_http' 'true', \
             'aws.region' '{REGION}', 'aws.access_key_id' '{KEY_ID}', \
             'aws.secret_access_key' '{SECRET}')",
            server.endpoint
        ),
        "csv",
    )
    .await;
    let q = "SELECT arrow_cast(l_returnflag, 'Utf8') AS f, count(*) AS n, \
             CAST(sum(l_quantity) AS BIGINT) AS q FROM {t} GROUP BY 1 ORDER BY 1";
    let want = run_dirk(&s, &q.replace("{t}", "lineitem"), "parquet").await;
    let got = run_dirk(&s, &q.replace("{t}", "lineitem_csv"), "csv").await;
    assert_same(&got, &want, true, "lineitem from CSV objects");
    // A location in FROM, read with the store the bucket's tables configured.
    let sql = format!("SELECT count(*), sum(n_nationkey) FROM 's3://{bucket}/tpch/nation/'");
    let got = run_dirk(&s, &sql, &sql).await;
    let want = run_datafusion(&reference, "SELECT count(*), sum(n_nationkey) FROM nation").await;
    assert_same(&got, &want, true, &sql);
    // The secret shows nowhere: not in EXPLAIN, SHOW, the event log or an error.
    let mut seen = Vec::new();
    for sql in [
        "EXPLAIN VERBOSE SELECT * FROM lineitem_csv WHERE l_quantity > 10",
        "EXPLAIN ANALYZE SELECT count(*) FROM lineitem",
        "SHOW ALL",
        "SELECT * FROM information_schema.tables",
    ] {
        let batches = run_dirk(&s, sql, sql).await;
        seen.push(
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string(),
        );
    }
    let wrong_column = format!(
        "CREATE EXTERNAL TABLE broken (x INT) STORED AS PARQUET LOCATION \
         's3://{bucket}/no/such/' {}",
        server
            .options()
            .replace("'aws.region'", "'aws.no_such_option'")
    );
    seen.push(try_dirk(&s, &wrong_column).await.unwrap_err().to_string());
    seen.push(format!("{:?}", s.engine().event_log()));
    seen.push(s.engine().event_log().chrome_trace());
    for text in &seen {
        assert!(!text.contains(SECRET), "the secret shows in: {text}");
    }
    assert!(
        seen[seen.len() - 3].contains("unknown option 'aws.no_such_option'"),
        "{}",
        seen[seen.len() - 3]
    );
}

/// What a user gets wrong, or what breaks, is one line naming what: a bucket that does not exist,
/// an endpoint nobody answers on, an object that is not Parquet. The session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_an_unreachable_store_and_a_corrupt_object_are_one_line() {
    let Some(server) = server() else { return };
    let bucket = "faults";
    server.create_bucket(bucket);
    let store = server.store(bucket);
    let good = vec![RecordBatch::try_from_iter([(
        "x",
        Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])) as _,
    )])
    .unwrap()];
    store
        .put(
            &ObjectPath::from("good/a.parquet"),
            PutPayload::from(parquet_bytes(&good)),
        )
        .await
        .unwrap();
    let mut cut = parquet_bytes(&good);
    cut.truncate(cut.len() / 2);
    store
        .put(
            &ObjectPath::from("corrupt/a.parquet"),
            PutPayload::from(cut),
        )
        .await
        .unwrap();
    let s = super::harness::builder(2).build().unwrap();
    let options = server.options();
    let one_line = |e: String, names: &str| {
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains(names), "{names} not named: {e}");
        assert!(!e.contains(SECRET), "the secret shows: {e}");
        assert!(!e.contains("likely caused by a bug"), "{e}");
    };
    let missing = format!(
        "CREATE EXTERNAL TABLE m STORED AS PARQUET LOCATION 's3://no-such-bucket/x/' {options}"
    );
    one_line(
        try_dirk(&s, &missing).await.unwrap_err().to_string(),
        "no-such-bucket",
    );
    let corrupt = format!(
        "CREATE EXTERNAL TABLE c STORED AS PARQUET LOCATION 's3://{bucket}/corrupt/' {options}"
    );
    one_line(
        try_dirk(&s, &corrupt).await.unwrap_err().to_string(),
        "corrupt/a.parquet",
    );
    // Nobody listens on this port: an error within the retry bound, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = options.replace(&server.endpoint, &format!("http://127.0.0.1:{closed}"));
    let started = Instant::now();
    let e = try_dirk(
        &s,
        &format!("CREATE EXTERNAL TABLE u STORED AS PARQUET LOCATION 's3://{bucket}/good/' {unreachable}"),
    )
    .await
    .unwrap_err()
    .to_string();
    one_line(e, &format!("127.0.0.1:{closed}"));
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    // The session goes on, and the good object reads.
    let good_table = format!(
        "CREATE EXTERNAL TABLE g STORED AS PARQUET LOCATION 's3://{bucket}/good/' {options}"
    );
    run_dirk(&s, &good_table, "good").await;
    let got = run_dirk(&s, "SELECT sum(x) AS s FROM g", "sum").await;
    let v = got[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(v, 6);
    assert!(s
        .table_names()
        .iter()
        .all(|n| n != "m" && n != "c" && n != "u"));
}

/// The Rust API reads a URL as SQL does: `read_parquet` and `register_parquet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_api_reads_parquet_from_a_url() {
    let Some(server) = server() else { return };
    let bucket = "api";
    server.create_bucket(bucket);
    let store = server.store(bucket);
    let batch = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(arrow::array::Int64Array::from_iter_values(0..1000)) as _,
        ),
        (
            "v",
            Arc::new(arrow::array::Float64Array::from_iter_values(
                (0..1000).map(|i| i as f64 / 2.0),
            )) as _,
        ),
    ])
    .unwrap();
    store
        .put(
            &ObjectPath::from("t/a.parquet"),
            PutPayload::from(parquet_bytes(&[batch])),
        )
        .await
        .unwrap();
    let s = super::harness::builder(2).build().unwrap();
    // The store's options, given once by a table, serve every later read of the bucket.
    run_dirk(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE first STORED AS PARQUET LOCATION 's3://{bucket}/t/' {}",
            server.options()
        ),
        "first",
    )
    .await;
    let url = format!("s3://{bucket}/t/a.parquet");
    let df = s
        .read_parquet(&url, Default::default())
        .await
        .unwrap()
        .filter(datafusion::prelude::col("k").lt(datafusion::prelude::lit(10)))
        .unwrap();
    let rows: usize = df
        .collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 10);
    s.register_parquet("second", &url, Default::default())
        .await
        .unwrap();
    let got = run_dirk(&s, "SELECT sum(v) AS s FROM second", "second").await;
    let want = run_dirk(&s, "SELECT sum(v) AS s FROM first", "first").await;
    assert_same(&got, &want, true, "register_parquet from a URL");

    // And writes: a DataFrame's result as Parquet files and as one CSV file, read back.
    let evens = || async {
        s.table_df("first")
            .await
            .unwrap()
            .filter(
                (datafusion::prelude::col("k") % datafusion::prelude::lit(2))
                    .eq(datafusion::prelude::lit(0)),
            )
            .unwrap()
    };
    let written = evens()
        .await
        .write_parquet(&format!("s3://{bucket}/evens/"))
        .await
        .unwrap();
    assert_eq!(written, 500);
    let csv_rows = evens()
        .await
        .write_csv(&format!("s3://{bucket}/evens.csv"))
        .await
        .unwrap();
    assert_eq!(csv_rows, 500);
    let want = evens().await.collect().await.unwrap();
    let back = s
        .read_parquet(&format!("s3://{bucket}/evens/"), Default::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&back, &want, false, "write_parquet read back");
    let csv = s
        .read_csv(&format!("s3://{bucket}/evens.csv"), Default::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(csv.iter().map(|b| b.num_rows()).sum::<usize>(), 500);
    assert!(objects(server, bucket, "evens")
        .await
        .iter()
        .all(|n| !n.contains("_dirk-")));
}

/// The objects under `prefix` in `bucket`.
pub(crate) async fn objects(server: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = server
        .store(bucket)
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

/// `COPY ... TO 's3://...'`: the workers write, the driver commits; what is written reads back
/// (through DataFusion, not Dirk) equal to the query; a write that fails leaves nothing; two
/// writes into one prefix each keep their own files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_a_bucket_is_all_or_nothing() {
    let Some(server) = server() else { return };
    let bucket = "copy";
    server.create_bucket(bucket);
    let s = super::harness::builder(2).partitions(3).build().unwrap();
    s.load_tpch(0.01).await.unwrap();
    let query = "SELECT l_orderkey, l_quantity, l_shipmode FROM lineitem WHERE l_quantity > 40";
    let copy = format!(
        "COPY ({query}) TO 's3://{bucket}/big/' STORED AS PARQUET {}",
        server.options()
    );
    let written = run_dirk(&s, &copy, "copy").await;
    let want = run_dirk(&s, query, "query").await;
    let rows: usize = want.iter().map(|b| b.num_rows()).sum();
    assert_same(
        &written,
        &[RecordBatch::try_from_iter([(
            "count",
            Arc::new(arrow::array::UInt64Array::from(vec![rows as u64])) as _,
        )])
        .unwrap()],
        true,
        "rows written",
    );
    let names = objects(server, bucket, "big").await;
    assert!(names.iter().any(|n| n == "big/_SUCCESS"), "{names:?}");
    assert!(
        names.iter().all(|n| !n.contains("_dirk-")),
        "staging left: {names:?}"
    );
    let reader = SessionContext::new();
    let url = url::Url::parse(&format!("s3://{bucket}")).unwrap();
    reader.register_object_store(&url, server.store(bucket));
    let read = |table: &str, dir: &str| {
        format!("CREATE EXTERNAL TABLE {table} STORED AS PARQUET LOCATION 's3://{bucket}/{dir}/'")
    };
    reader.sql(&read("big", "big")).await.unwrap();
    let back = reader
        .sql("SELECT * FROM big")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_same(&back, &want, false, "COPY read back by DataFusion");

    // A query that fails while the workers write leaves nothing behind.
    let failing = format!(
        "COPY (SELECT l_orderkey / (l_linenumber - l_linenumber) AS boom FROM lineitem) \
         TO 's3://{bucket}/failed/' STORED AS PARQUET"
    );
    let e = try_dirk(&s, &failing).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("divide by zero"), "{e}");
    assert_eq!(
        objects(server, bucket, "failed").await,
        Vec::<String>::new()
    );

    // Two writes into one prefix at once: each adds its own files, neither replaces the other's.
    let into_shared = |q: &str| format!("COPY ({q}) TO 's3://{bucket}/shared/' STORED AS PARQUET");
    let (first, second) = (
        into_shared("SELECT 1 AS x FROM lineitem LIMIT 100"),
        into_shared("SELECT 2 AS x FROM lineitem LIMIT 50"),
    );
    let (a, b) = tokio::join!(try_dirk(&s, &first), try_dirk(&s, &second));
    a.unwrap();
    b.unwrap();
    reader.sql(&read("shared", "shared")).await.unwrap();
    let got = reader
        .sql("SELECT x, count(*) AS n FROM shared GROUP BY x ORDER BY x")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&got)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 1 | 100 |") && text.contains("| 2 | 50  |"),
        "{text}"
    );

    // One file.
    run_dirk(
        &s,
        &format!("COPY (SELECT * FROM nation) TO 's3://{bucket}/one/nation.csv' STORED AS CSV"),
        "one file",
    )
    .await;
    assert_eq!(
        objects(server, bucket, "one").await,
        vec!["one/nation.csv".to_string()]
    );

    // Hive-style partition directories, written and read back with a filter on the partition
    // column.
    run_dirk(
        &s,
        &format!(
            "COPY (SELECT n_nationkey, n_name, n_regionkey FROM nation) \
             TO 's3://{bucket}/by_region/' STORED AS PARQUET PARTITIONED BY (n_regionkey)"
        ),
        "partitioned",
    )
    .await;
    let names = objects(server, bucket, "by_region").await;
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("by_region/n_regionkey=3/")),
        "{names:?}"
    );
    run_dirk(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE by_region (n_nationkey BIGINT, n_name VARCHAR, \
             n_regionkey BIGINT) STORED AS PARQUET PARTITIONED BY (n_regionkey) \
             LOCATION 's3://{bucket}/by_region/'"
        ),
        "read partitioned",
    )
    .await;
    let q = "SELECT count(*) AS n FROM {t} WHERE n_regionkey = 3";
    let want = run_dirk(&s, &q.replace("{t}", "nation"), "nation").await;
    let got = run_dirk(&s, &q.replace("{t}", "by_region"), "by_region").await;
    assert_same(&got, &want, true, "partition directories");
}

/// What a proxy does to one connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Passes it through.
    None,
    /// Answers 503 `SlowDown`, as S3 does when a prefix is read too fast.
    SlowDown,
    /// Passes the request on and cuts the answer after this many bytes.
    CutAfter(usize),
}

/// A TCP proxy to the S3 server that gives connection `i` the fault `plan(i)`; with the
/// client's connection pool off (`'aws.pool_max_idle_per_host' '0'`) a connection is a request.
/// Counts the faults it injected.
fn fault_proxy(
    upstream: u16,
    plan: fn(usize) -> Fault,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let injected = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&injected);
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            let fault = plan(i);
            if !matches!(fault, Fault::None) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::spawn(move || serve(client, upstream, fault));
        }
    });
    (port, injected)
}

fn serve(mut client: TcpStream, upstream: u16, fault: Fault) {
    use std::net::Shutdown;
    if let Fault::SlowDown = fault {
        // The request's head, then the answer S3 gives a client that reads too fast.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate.</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let limit = match fault {
        Fault::CutAfter(n) => n,
        _ => usize::MAX,
    };
    let mut sent = 0;
    let mut buf = [0u8; 8192];
    while sent < limit {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Transient faults of the store (503 SlowDown, an answer cut mid-body) are retried and the
/// answer is right; faults that persist are one line within the retry bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_store_faults_are_retried_and_persistent_ones_are_one_line() {
    use std::sync::atomic::Ordering;
    let Some(server) = server() else { return };
    let bucket = "flaky";
    server.create_bucket(bucket);
    let store = server.store(bucket);
    let mut want = 0i64;
    for f in 0..4i64 {
        let keys: Vec<i64> = (f * 20_000..(f + 1) * 20_000).collect();
        want += keys.iter().sum::<i64>();
        let batch = RecordBatch::try_from_iter([(
            "k",
            Arc::new(arrow::array::Int64Array::from(keys)) as _,
        )])
        .unwrap();
        store
            .put(
                &ObjectPath::from(format!("t/part-{f}.parquet")),
                PutPayload::from(parquet_bytes(&[batch])),
            )
            .await
            .unwrap();
    }
    let through = |port: u16| {
        server
            .options()
            .replace(&server.endpoint, &format!("http://127.0.0.1:{port}"))
            .replace("OPTIONS (", "OPTIONS ('aws.pool_max_idle_per_host' '0', ")
    };
    let s = super::harness::builder(2).partitions(4).build().unwrap();
    let (flaky, injected) = fault_proxy(server.port(), |i| match i % 10 {
        3 => Fault::SlowDown,
        7 => Fault::CutAfter(600),
        _ => Fault::None,
    });
    run_dirk(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://{bucket}/t/' {}",
            through(flaky)
        ),
        "through a flaky proxy",
    )
    .await;
    let got = run_dirk(&s, "SELECT count(*) AS n, sum(k) AS s FROM t", "sum").await;
    let text = arrow::util::pretty::pretty_format_batches(&got)
        .unwrap()
        .to_string();
    assert!(text.contains(&format!("| 80000 | {want} |")), "{text}");
    assert!(
        injected.load(Ordering::Relaxed) > 0,
        "no fault was injected"
    );

    let (down, _) = fault_proxy(server.port(), |_| Fault::SlowDown);
    let started = Instant::now();
    let e = try_dirk(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE d STORED AS PARQUET LOCATION 's3://{bucket}/t/' {}",
            through(down)
        ),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains("SlowDown") || e.contains("503"), "{e}");
    assert!(e.contains(bucket), "names the bucket: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
}
