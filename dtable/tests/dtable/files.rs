//! DTables read from local CSV and Parquet files: file splits become partitions read by the
//! worker that owns them; results equal DataFusion's over the same files; malformed and
//! truncated files are clear errors that leave the session usable and the catalog unchanged.

use super::compare::{assert_same, run_datafusion, run_dirk, storage_read, text_of, try_dirk};
use super::queries::tables;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::Session;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dirk-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Table `t` written as two CSV files and as a Parquet file with several row groups.
fn write_files(dir: &Path) {
    let (_, t) = tables().into_iter().find(|(n, _)| *n == "t").unwrap();
    std::fs::create_dir_all(dir.join("csv")).unwrap();
    let half = t.num_rows() / 2;
    for (i, part) in [t.slice(0, half), t.slice(half, t.num_rows() - half)]
        .iter()
        .enumerate()
    {
        let f = std::fs::File::create(dir.join(format!("csv/part{i}.csv"))).unwrap();
        let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(f);
        w.write(part).unwrap();
    }
    std::fs::create_dir_all(dir.join("parquet")).unwrap();
    for (i, part) in [t.slice(0, half), t.slice(half, t.num_rows() - half)]
        .iter()
        .enumerate()
    {
        let f = std::fs::File::create(dir.join(format!("parquet/part{i}.parquet"))).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(300))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, t.schema(), Some(props)).unwrap();
        w.write(part).unwrap();
        w.close().unwrap();
    }
}

const DDL: [(&str, &str); 2] = [
    (
        "tcsv",
        "CREATE EXTERNAL TABLE tcsv (a BIGINT, b VARCHAR, c DOUBLE, k BIGINT) STORED AS CSV \
         LOCATION '{dir}/csv/' OPTIONS ('format.has_header' 'true')",
    ),
    (
        "tpq",
        "CREATE EXTERNAL TABLE tpq STORED AS PARQUET LOCATION '{dir}/parquet/'",
    ),
];

const QUERIES: [&str; 4] = [
    "SELECT * FROM {t}",
    "SELECT b, count(*), sum(a), avg(c) FROM {t} GROUP BY b",
    "SELECT k, max(a) FROM {t} WHERE c > 100 GROUP BY k",
    "SELECT count(*), count(a), sum(k) FROM {t}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tables_are_split_over_workers_and_equal_datafusion() {
    let dir = temp_dir("external");
    write_files(&dir);
    let dir_s = dir.display().to_string();
    let reference = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (_, ddl) in DDL {
        reference
            .sql(&ddl.replace("{dir}", &dir_s))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }
    for (workers, partitions) in [(1, 1), (2, 3), (4, 8)] {
        let s = super::harness::builder(workers)
            .partitions(partitions)
            .build()
            .unwrap();
        for (name, ddl) in DDL {
            run_dirk(&s, &ddl.replace("{dir}", &dir_s), name).await;
            // External: listed, described, never resident.
            assert!(s.table_names().contains(&name.to_string()), "{name}");
            let e = s.table(name).unwrap_err().to_string();
            assert!(e.contains("external table"), "{e}");
            // Each query's tasks read the files: one task per split, spread over the workers.
            let analyzed =
                run_dirk(&s, &format!("EXPLAIN ANALYZE SELECT * FROM {name}"), name).await;
            let text = text_of(&analyzed);
            assert!(text.contains("DataSourceExec"), "{name}: {text}");
            assert!(text.contains("rows_out=2000"), "{name}: {text}");
            if workers > 1 {
                let spread = text.lines().any(|l| {
                    l.contains("workers={")
                        && l.split("workers={").nth(1).is_some_and(|w| {
                            w.split('}').next().is_some_and(|ids| ids.contains(','))
                        })
                });
                assert!(spread, "{name}: splits read on several workers: {text}");
            }
            for q in QUERIES {
                let sql = q.replace("{t}", name);
                let want = reference.sql(&sql).await.unwrap().collect().await.unwrap();
                let what = format!("{workers} workers, {partitions} partitions: {sql}");
                let got = run_dirk(&s, &sql, &what).await;
                assert_same(&got, &want, false, &what);
            }
        }
        // A location named in FROM, a file or a directory, equals DataFusion over the same.
        let one_file = format!("{dir_s}/parquet/part0.parquet");
        let by_location = SessionContext::new();
        by_location
            .register_parquet("f", &one_file, Default::default())
            .await
            .unwrap();
        by_location
            .register_csv("d", &format!("{dir_s}/csv/"), Default::default())
            .await
            .unwrap();
        for (location, registered) in [(one_file.clone(), "f"), (format!("{dir_s}/csv/"), "d")] {
            let sql = format!("SELECT count(*), sum(a), min(b) FROM '{location}'");
            let got = run_dirk(&s, &sql, &sql).await;
            let want = run_datafusion(
                &by_location,
                &format!("SELECT count(*), sum(a), min(b) FROM {registered}"),
            )
            .await;
            assert_same(&got, &want, true, &sql);
        }
        // A name that is neither a table nor a location stays an unknown table.
        let e = expect_error(&s, "SELECT * FROM no_such_table").await;
        assert!(
            e.contains("no_such_table") && e.contains("not found"),
            "{e}"
        );
        // A resident copy: a DTable split over the workers.
        run_dirk(&s, "CREATE TABLE resident AS SELECT * FROM tcsv", "copy").await;
        assert_eq!(s.table("resident").unwrap().num_rows(), 2000);
        // The same files through the DataFrame API: registered, and read lazily.
        let t = s
            .register_parquet(
                "tpq2",
                &format!("{dir_s}/parquet/"),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(t.num_rows(), 2000);
        let lazy = s
            .read_csv(
                &format!("{dir_s}/csv/"),
                datafusion::prelude::CsvReadOptions::new(),
            )
            .await
            .unwrap();
        assert_eq!(lazy.count().await.unwrap(), 2000);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn expect_error(s: &Session, sql: &str) -> String {
    let r = match s.sql(sql).await {
        Ok(df) => df.collect().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = r.expect_err(sql).to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// The error of reading the external table `ddl` makes: at `CREATE` where the files' schema is
/// inferred, or at the first query that reads them.
async fn expect_read_error(s: &Session, ddl: &str, name: &str) -> String {
    let e = match try_dirk(s, ddl).await {
        Err(e) => e.to_string(),
        Ok(_) => expect_error(s, &format!("SELECT * FROM {name}")).await,
    };
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

async fn still_usable(s: &Session) {
    let got = run_dirk(s, "SELECT count(*) FROM good", "after an error").await;
    assert_eq!(got[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_csv_and_truncated_parquet_are_clear_errors() {
    let dir = temp_dir("bad");
    let s = super::harness::builder(2).partitions(3).build().unwrap();
    run_dirk(&s, "CREATE TABLE good AS VALUES (1), (2)", "setup").await;

    // A row with a word where the schema says integer.
    let mut csv = String::from("a,b\n");
    for i in 0..500 {
        csv.push_str(&format!("{i},row{i}\n"));
    }
    csv.push_str("oops,bad\n");
    std::fs::write(dir.join("bad.csv"), &csv).unwrap();
    let e = expect_read_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE badcsv (a INT, b VARCHAR) STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            dir.join("bad.csv").display()
        ),
        "badcsv",
    )
    .await;
    assert!(
        e.contains("oops") || e.to_lowercase().contains("parse"),
        "{e}"
    );
    // Read into a resident table, the bad file leaves no half-made table.
    let e = expect_error(&s, "CREATE TABLE badcopy AS SELECT * FROM badcsv").await;
    assert!(
        e.contains("oops") || e.to_lowercase().contains("parse"),
        "{e}"
    );
    assert!(s.table("badcopy").is_err(), "no half-made table: {e}");
    still_usable(&s).await;

    // A row with too many fields.
    std::fs::write(dir.join("ragged.csv"), "a,b\n1,x\n2,y,extra\n").unwrap();
    let e = expect_read_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE ragged STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            dir.join("ragged.csv").display()
        ),
        "ragged",
    )
    .await;
    assert!(e.contains("ragged.csv") && e.contains("line 3"), "{e}");
    still_usable(&s).await;

    // A Parquet file cut in half.
    let (_, t) = tables().into_iter().find(|(n, _)| *n == "t").unwrap();
    let path = dir.join("cut.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        t.schema(),
        None,
    )
    .unwrap();
    w.write(&t).unwrap();
    w.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_read_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE cut STORED AS PARQUET LOCATION '{}'",
            path.display()
        ),
        "cut",
    )
    .await;
    assert!(e.to_lowercase().contains("parquet"), "{e}");
    assert!(s.table("cut").is_err());
    still_usable(&s).await;

    // Compressed CSV: refused, never read as if it were plain text.
    std::fs::write(dir.join("t.csv.gz"), [0x1f, 0x8b, 0x08, 0x00]).unwrap();
    let e = expect_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE gz STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.compression' 'gzip')",
            dir.join("t.csv.gz").display()
        ),
    )
    .await;
    assert!(e.contains("compressed files"), "{e}");
    still_usable(&s).await;

    // A location that does not exist.
    let e = expect_error(
        &s,
        "CREATE EXTERNAL TABLE nowhere STORED AS PARQUET LOCATION '/no/such/dir/x.parquet'",
    )
    .await;
    assert!(!e.is_empty());
    still_usable(&s).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(count(*), sum(a))` of table `t`.
async fn count_and_sum(s: &Session, t: &str) -> (i64, i64) {
    use arrow::array::{Array, Int64Array};
    let sql = format!("SELECT count(*), sum(a) FROM {t}");
    let got = run_dirk(s, &sql, &sql).await;
    let batch = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
    let n = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let sum = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    (n.value(0), if sum.is_null(0) { 0 } else { sum.value(0) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_table_reads_its_files_at_each_query_and_insert_writes_new_ones() {
    let dir = temp_dir("follow");
    let csv = |rows: std::ops::Range<i64>| {
        let mut text = String::from("a,b\n");
        for i in rows {
            text.push_str(&format!("{i},r{i}\n"));
        }
        text
    };
    let sum = |rows: std::ops::Range<i64>| rows.sum::<i64>();
    let s = super::harness::builder(2).partitions(3).build().unwrap();
    // Created over an empty directory, as a table whose files are written afterwards is.
    let ddl = format!(
        "CREATE EXTERNAL TABLE f (a BIGINT, b VARCHAR) STORED AS CSV LOCATION '{}/' \
         OPTIONS ('format.has_header' 'true')",
        dir.display()
    );
    run_dirk(&s, &ddl, "create").await;
    assert_eq!(count_and_sum(&s, "f").await, (0, 0));

    std::fs::write(dir.join("1.csv"), csv(0..100)).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (100, sum(0..100)),
        "a file added"
    );
    std::fs::write(dir.join("2.csv"), csv(100..150)).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (150, sum(0..150)),
        "a second file"
    );
    std::fs::write(dir.join("1.csv"), csv(0..10)).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (60, sum(0..10) + sum(100..150)),
        "a file rewritten"
    );
    std::fs::remove_file(dir.join("2.csv")).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (10, sum(0..10)),
        "a file removed"
    );

    // INSERT writes a new file beside them, which the next query (and any reader) lists.
    let files = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    run_dirk(
        &s,
        "INSERT INTO f VALUES (1000, 'x'), (2000, 'y')",
        "insert",
    )
    .await;
    assert_eq!(count_and_sum(&s, "f").await, (12, sum(0..10) + 3000));
    let after_insert = files(&dir);
    assert_eq!(
        after_insert.len(),
        2,
        "one new file, no staging left: {after_insert:?}"
    );
    let reference = SessionContext::new();
    reference.sql(&ddl).await.unwrap().collect().await.unwrap();
    let want = run_datafusion(&reference, "SELECT count(*), sum(a) FROM f").await;
    let got = run_dirk(&s, "SELECT count(*), sum(a) FROM f", "read back").await;
    assert_same(&got, &want, true, "what INSERT wrote, read by DataFusion");
    std::fs::write(dir.join("3.csv"), csv(200..210)).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (22, sum(0..10) + 3000 + sum(200..210)),
        "still follows its files"
    );

    // An INSERT that fails leaves no file behind.
    let e = expect_error(&s, "INSERT INTO f SELECT 1 / (a - a), 'z' FROM f").await;
    assert!(e.to_lowercase().contains("divide"), "{e}");
    assert_eq!(files(&dir).len(), 3, "nothing of a failed INSERT");

    // INSERT OVERWRITE replaces every file.
    run_dirk(
        &s,
        "INSERT OVERWRITE f SELECT a * 2, b FROM f WHERE a < 5",
        "overwrite",
    )
    .await;
    assert_eq!(count_and_sum(&s, "f").await, (5, 2 * sum(0..5)));
    assert_eq!(files(&dir).len(), 1, "only the new file: {:?}", files(&dir));

    // What needs resident rows says so; a resident copy takes them.
    for sql in [
        "UPDATE f SET a = 0",
        "DELETE FROM f WHERE a = 0",
        "TRUNCATE f",
    ] {
        let e = expect_error(&s, sql).await;
        assert!(e.contains("external table"), "{sql}: {e}");
    }
    run_dirk(&s, "CREATE TABLE r AS SELECT * FROM f", "copy").await;
    run_dirk(&s, "UPDATE r SET a = 0", "update the copy").await;
    assert_eq!(count_and_sum(&s, "r").await, (5, 0));
    assert_eq!(count_and_sum(&s, "f").await, (5, 2 * sum(0..5)));
    // Dropped, the table goes; its files stay.
    run_dirk(&s, "DROP TABLE f", "drop").await;
    assert!(!s.table_names().contains(&"f".to_string()));
    assert_eq!(files(&dir).len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_a_parquet_footer_once_and_only_the_columns_a_query_needs() {
    let dir = temp_dir("footers");
    write_files(&dir);
    let s = super::harness::builder(1).partitions(2).build().unwrap();
    let ddl = format!(
        "CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION '{}/parquet/'",
        dir.display()
    );
    run_dirk(&s, &ddl, "create").await;
    let analyze = |sql: &'static str| {
        let s = s.clone();
        async move { storage_read(&text_of(&run_dirk(&s, sql, sql).await)) }
    };
    let (first_bytes, first_requests) = analyze("EXPLAIN ANALYZE SELECT sum(a) FROM p").await;
    let (again_bytes, again_requests) = analyze("EXPLAIN ANALYZE SELECT sum(a) FROM p").await;
    assert!(
        again_requests < first_requests && again_bytes < first_bytes,
        "footers come from the worker's cache the second time: \
         {first_bytes} B in {first_requests} requests, then {again_bytes} B in {again_requests}"
    );
    let (all_bytes, _) = analyze("EXPLAIN ANALYZE SELECT * FROM p").await;
    assert!(
        again_bytes * 2 < all_bytes,
        "one column of four reads less than all: {again_bytes} B against {all_bytes} B"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
