//! TPC-H: the 22 queries through Dirk (embedded, one worker per core) and through DataFusion on
//! one node, over the same in-memory data with the same partitions, in one run. Runs alternate
//! between the systems (Dirk, DataFusion, Dirk, ...): 1 warm-up and `--runs` timed runs each;
//! the median is reported, with the ratio Dirk / DataFusion and its geometric mean.

use crate::report::{Report, Row};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_dtable::{tpch, Session};
use std::sync::Arc;
use std::time::Instant;

/// Arguments of the `tpch` suite.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Scale factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Timed runs per query and system (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// In-process workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Only these queries, e.g. `1,6,18`.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    crate::block_on(run_async(args, report))
}

async fn run_async(args: &Args, report: &mut Report) -> Result<(), String> {
    let err = |e: dirk_dtable::DirkError| e.to_string();
    let mut builder = Session::builder();
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let session = builder.build().map_err(err)?;
    let partitions = session.partitions();
    let workers = session.engine().workers().len();
    let started = Instant::now();
    let tables = session.load_tpch(args.scale).await.map_err(err)?;
    eprintln!(
        "TPC-H SF {}: generated in {:.1} s; {workers} workers, {partitions} partitions",
        args.scale,
        started.elapsed().as_secs_f64()
    );
    // DataFusion gets the very same batches, partition for partition.
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    for (name, table) in &tables {
        let mut parts = Vec::new();
        for part in table.partitions() {
            let mut batches = Vec::new();
            for c in part {
                let chunk = session.engine().fetch(c).map_err(|e| e.to_string())?;
                batches.extend(chunk.batches().iter().cloned());
            }
            parts.push(batches);
        }
        let mem = MemTable::try_new(table.schema().clone(), parts).map_err(|e| e.to_string())?;
        ctx.register_table(name.as_str(), Arc::new(mem))
            .map_err(|e| e.to_string())?;
    }

    println!("| query | Dirk s | DataFusion s | Dirk / DataFusion |");
    println!("|---|---|---|---|");
    let mut log_sum = 0.0;
    let mut counted = 0;
    let mut worst = (0.0f64, 0usize);
    for (i, sql) in tpch::QUERIES.iter().enumerate() {
        let q = i + 1;
        if !args.queries.is_empty() && !args.queries.contains(&q) {
            continue;
        }
        let mut dirk = Vec::new();
        let mut df = Vec::new();
        for run in 0..=args.runs {
            let t = Instant::now();
            let rows: usize = session
                .sql(sql)
                .await
                .map_err(err)?
                .collect()
                .await
                .map_err(err)?
                .iter()
                .map(|b| b.num_rows())
                .sum();
            let dirk_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let df_rows: usize = ctx
                .sql(sql)
                .await
                .map_err(|e| e.to_string())?
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|b| b.num_rows())
                .sum();
            let df_s = t.elapsed().as_secs_f64();
            if rows != df_rows {
                return Err(format!(
                    "q{q:02}: Dirk returned {rows} rows, DataFusion {df_rows}"
                ));
            }
            if run > 0 {
                dirk.push(dirk_s);
                df.push(df_s);
            }
        }
        let (d, f) = (median(dirk), median(df));
        let ratio = d / f;
        log_sum += ratio.ln();
        counted += 1;
        if ratio > worst.0 {
            worst = (ratio, q);
        }
        println!("| q{q:02} | {d:.3} | {f:.3} | {ratio:.2} |");
        for (system, value) in [("dirk", d), ("datafusion", f)] {
            report.add(Row {
                suite: "tpch",
                case: format!("q{q:02}"),
                system,
                metric: "seconds",
                value,
                unit: "s",
            });
        }
    }
    if counted > 0 {
        let geomean = (log_sum / counted as f64).exp();
        println!(
            "\ngeometric mean Dirk / DataFusion: {geomean:.2} over {counted} queries \
             (worst: q{:02} at {:.2})",
            worst.1, worst.0
        );
        report.add(Row {
            suite: "tpch",
            case: "geomean".into(),
            system: "dirk/datafusion",
            metric: "ratio",
            value: geomean,
            unit: "x",
        });
    }
    Ok(())
}
