//! DTables read from local CSV and Parquet files: file splits become partitions read by the
//! worker that owns them; results equal DataFusion's over the same files; malformed and
//! truncated files are clear errors that leave the session usable and the catalog unchanged.

use super::compare::{assert_same, run_dirk};
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
            let table = s.table(name).unwrap();
            assert_eq!(table.num_rows(), 2000, "{name}");
            // CSV splits at any byte; Parquet at row groups, and DataFusion splits a small
            // Parquet file no further than into its files.
            let splits = if name == "tcsv" {
                partitions
            } else {
                partitions.min(2)
            };
            assert_eq!(
                table.num_partitions(),
                splits,
                "{name}: one split per partition"
            );
            // Each split was read by a task; its output stays on the worker that ran it.
            let owners: std::collections::BTreeSet<_> = table.chunks().map(|c| c.owner).collect();
            if workers > 1 && name == "tcsv" {
                assert!(
                    owners.len() > 1,
                    "{name}: splits spread over workers: {owners:?}"
                );
                let empty = table
                    .partitions()
                    .iter()
                    .filter(|p| p.iter().map(|c| c.rows).sum::<u64>() == 0)
                    .count();
                assert_eq!(empty, 0, "{name}: every byte-range split holds rows");
            }
            for q in QUERIES {
                let sql = q.replace("{t}", name);
                let want = reference.sql(&sql).await.unwrap().collect().await.unwrap();
                let what = format!("{workers} workers, {partitions} partitions: {sql}");
                let got = run_dirk(&s, &sql, &what).await;
                assert_same(&got, &want, false, &what);
            }
        }
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
    let e = expect_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE badcsv (a INT, b VARCHAR) STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            dir.join("bad.csv").display()
        ),
    )
    .await;
    assert!(
        e.contains("oops") || e.to_lowercase().contains("parse"),
        "{e}"
    );
    assert!(s.table("badcsv").is_err(), "no half-made table: {e}");
    still_usable(&s).await;

    // A row with too many fields.
    std::fs::write(dir.join("ragged.csv"), "a,b\n1,x\n2,y,extra\n").unwrap();
    let e = expect_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE ragged STORED AS CSV LOCATION '{}' \
             OPTIONS ('format.has_header' 'true')",
            dir.join("ragged.csv").display()
        ),
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
    let e = expect_error(
        &s,
        &format!(
            "CREATE EXTERNAL TABLE cut STORED AS PARQUET LOCATION '{}'",
            path.display()
        ),
    )
    .await;
    assert!(e.to_lowercase().contains("parquet"), "{e}");
    assert!(s.table("cut").is_err());
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
async fn an_external_table_follows_its_files_until_changed_through_dirk() {
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
    // Unchanged files are not read again: the resident chunks stay.
    let chunks: Vec<_> = s.table("f").unwrap().chunks().map(|c| c.id).collect();
    assert_eq!(count_and_sum(&s, "f").await, (100, sum(0..100)));
    let again: Vec<_> = s.table("f").unwrap().chunks().map(|c| c.id).collect();
    assert_eq!(chunks, again, "files unchanged, table not read again");

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

    // Changed through Dirk, the table holds rows its files do not: it stops following them.
    run_dirk(&s, "INSERT INTO f VALUES (1000, 'x')", "insert").await;
    assert_eq!(count_and_sum(&s, "f").await, (11, sum(0..10) + 1000));
    std::fs::write(dir.join("3.csv"), csv(200..210)).unwrap();
    assert_eq!(
        count_and_sum(&s, "f").await,
        (11, sum(0..10) + 1000),
        "no longer follows its files"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
