//! In-place mutation against the out-of-place rewrite. One table (int64, float64 and string
//! columns) is loaded twice: into Dirk (embedded, one worker per core) and into DataFusion's
//! `MemTable` (its own copy, so Dirk's buffers are not shared with it). Each case runs Dirk's
//! statement, then DataFusion's equivalent rewrite — `CREATE TABLE AS SELECT` with `CASE WHEN`,
//! as table formats without in-place writes do — and swaps the new table in. Printed per case:
//! time, rows/s, the ratio, and each system's extra memory at its peak as a multiple of the
//! table's size (1.00 = nothing beyond the table).

use crate::alloc;
use crate::report::{Report, Row};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::Session;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of the `mutation` suite.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Rows in the table.
    #[arg(long, default_value_t = 50_000_000)]
    rows: usize,
    /// In-process workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

const BATCH: usize = 1 << 20;

fn batches(rows: usize, first_id: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
        Field::new("c", DataType::Int64, false),
        Field::new("f1", DataType::Float64, false),
        Field::new("f2", DataType::Float64, false),
        Field::new("f3", DataType::Float64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let mut out = Vec::new();
    let mut start = first_id;
    while start < first_id + rows {
        let end = (start + BATCH).min(first_id + rows);
        let ids = || start as i64..end as i64;
        let ints = |m: i64| {
            Arc::new(Int64Array::from_iter_values(
                ids().map(move |i| i * m % 1000),
            ))
        };
        let floats = |m: f64| {
            Arc::new(Float64Array::from_iter_values(
                ids().map(move |i| i as f64 * m),
            ))
        };
        out.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids())),
                    ints(7),
                    ints(13),
                    ints(31),
                    floats(0.5),
                    floats(1.5),
                    floats(2.5),
                    Arc::new(StringArray::from_iter_values(
                        ids().map(|i| format!("s{}", i % 1000)),
                    )),
                ],
            )
            .expect("batch"),
        );
        start = end;
    }
    out
}

/// One case: Dirk's statement and DataFusion's out-of-place SQL (whose result replaces `t`).
struct Case {
    name: &'static str,
    rows_changed: f64,
    dirk: &'static str,
    rewrite: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "UPDATE 1% of a",
        rows_changed: 0.01,
        dirk: "UPDATE t SET a = a + 1 WHERE id % 100 = 0",
        rewrite: "SELECT id, CASE WHEN id % 100 = 0 THEN a + 1 ELSE a END AS a, b, c, f1, f2, f3, s FROM t",
    },
    Case {
        name: "UPDATE 10% of a",
        rows_changed: 0.10,
        dirk: "UPDATE t SET a = a + 1 WHERE id % 10 = 0",
        rewrite: "SELECT id, CASE WHEN id % 10 = 0 THEN a + 1 ELSE a END AS a, b, c, f1, f2, f3, s FROM t",
    },
    Case {
        name: "UPDATE 100% of a",
        rows_changed: 1.0,
        dirk: "UPDATE t SET a = a + 1",
        rewrite: "SELECT id, a + 1 AS a, b, c, f1, f2, f3, s FROM t",
    },
    Case {
        name: "DELETE 10%",
        rows_changed: 0.10,
        dirk: "DELETE FROM t WHERE id % 10 = 1",
        rewrite: "SELECT * FROM t WHERE id % 10 <> 1",
    },
    Case {
        name: "INSERT 1M rows",
        rows_changed: -1.0,
        dirk: "INSERT INTO t SELECT * FROM staging",
        rewrite: "SELECT * FROM t UNION ALL SELECT * FROM staging",
    },
    Case {
        name: "ADD COLUMN z DEFAULT 0",
        rows_changed: 1.0,
        dirk: "ALTER TABLE t ADD COLUMN z BIGINT DEFAULT 0",
        rewrite: "SELECT *, CAST(0 AS BIGINT) AS z FROM t",
    },
];

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    alloc::start_counting();
    crate::block_on(run_async(args, report))
}

fn table_bytes(b: &[RecordBatch]) -> usize {
    b.iter().map(|b| b.get_array_memory_size()).sum()
}

async fn run_async(args: &Args, report: &mut Report) -> Result<(), String> {
    let err = |e: dirk_dtable::DirkError| e.to_string();
    let dferr = |e: datafusion::error::DataFusionError| e.to_string();
    let mut builder = Session::builder();
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let session = builder.build().map_err(err)?;
    let partitions = session.partitions();
    let started = Instant::now();
    let data = batches(args.rows, 0);
    let bytes = table_bytes(&data);
    let staging = batches(1_000_000, args.rows);
    // Dirk copies the batches into its partitions; DataFusion keeps these.
    session.create_table("t", data.clone()).map_err(err)?;
    session
        .create_table("staging", staging.clone())
        .map_err(err)?;
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let per_part = data.len().div_ceil(partitions);
    let parts: Vec<Vec<RecordBatch>> = data.chunks(per_part).map(<[_]>::to_vec).collect();
    drop(data);
    let schema = parts[0][0].schema();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(schema.clone(), parts).map_err(dferr)?),
    )
    .map_err(dferr)?;
    ctx.register_table(
        "staging",
        Arc::new(MemTable::try_new(schema, vec![staging]).map_err(dferr)?),
    )
    .map_err(dferr)?;
    eprintln!(
        "mutation: {} rows x 8 columns ({:.2} GB per copy) loaded in {:.1} s; {partitions} partitions",
        args.rows,
        bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );

    println!("| case | Dirk s | Dirk rows/s | rewrite s | rewrite rows/s | rewrite / Dirk | Dirk peak | rewrite peak |");
    println!("|---|---|---|---|---|---|---|---|");
    for case in CASES {
        let changed = if case.rows_changed < 0.0 {
            1_000_000.0
        } else {
            args.rows as f64 * case.rows_changed
        };

        let base = alloc::reset_peak();
        let t = Instant::now();
        session
            .sql(case.dirk)
            .await
            .map_err(err)?
            .collect()
            .await
            .map_err(err)?;
        let dirk_s = t.elapsed().as_secs_f64();
        let dirk_peak = 1.0 + (alloc::peak() - base) as f64 / bytes as f64;

        let base = alloc::reset_peak();
        let t = Instant::now();
        let new = ctx
            .sql(case.rewrite)
            .await
            .map_err(dferr)?
            .collect_partitioned()
            .await
            .map_err(dferr)?;
        let new_schema = new
            .iter()
            .flatten()
            .next()
            .map(|b| b.schema())
            .ok_or("empty rewrite")?;
        let table = MemTable::try_new(new_schema, new).map_err(dferr)?;
        ctx.deregister_table("t").map_err(dferr)?;
        ctx.register_table("t", Arc::new(table)).map_err(dferr)?;
        let df_s = t.elapsed().as_secs_f64();
        let df_peak = 1.0 + (alloc::peak() - base) as f64 / bytes as f64;

        println!(
            "| {} | {dirk_s:.3} | {:.2e} | {df_s:.3} | {:.2e} | {:.2} | {dirk_peak:.2}x | {df_peak:.2}x |",
            case.name,
            changed / dirk_s,
            changed / df_s,
            df_s / dirk_s,
        );
        for (system, metric, value, unit) in [
            ("dirk", "seconds", dirk_s, "s"),
            ("datafusion-rewrite", "seconds", df_s, "s"),
            ("dirk", "peak_memory", dirk_peak, "x table"),
            ("datafusion-rewrite", "peak_memory", df_peak, "x table"),
        ] {
            report.add(Row {
                suite: "mutation",
                case: case.name.into(),
                system,
                metric,
                value,
                unit,
            });
        }
    }
    Ok(())
}
