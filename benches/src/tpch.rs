//! TPC-H: the 22 queries through Dirk (embedded, one worker per core) and through DataFusion on
//! one node, over the same in-memory data with the same partitions, in one run; with
//! `--workers local:N` also through Dirk on N local `dirk worker` processes (TPC-H generated on
//! the workers, the same total threads). Runs alternate between the systems: 1 warm-up and
//! `--runs` timed runs each; the median is reported, with ratios and their geometric means.
//! `--explain` prints both systems' plans of each query first. `--source parquet:DIR` (or
//! `s3://bucket/prefix`) reads the tables from Parquet files instead, made once with
//! `--write-parquet DIR`: both systems make external tables over them and read the files in
//! each query (Dirk's tasks on its workers, straight from the files or the store).

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
    /// In-process workers (default: one per core), or `local:N`: also run on N local worker
    /// processes (started from the `dirk` binary beside this one, or `--dirk`).
    #[arg(long)]
    workers: Option<String>,
    /// The `dirk` binary that `local:N` starts workers from.
    #[arg(long)]
    dirk: Option<std::path::PathBuf>,
    /// Only these queries, e.g. `1,6,18`.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// Print each query's plans (DataFusion's physical plan and Dirk's stages) before timing it.
    #[arg(long)]
    explain: bool,
    /// After timing each query, run it once more on Dirk (and on the cluster) and write the
    /// engine's task records of that run to `DIR/qNN-dirk.json` (`-cluster.json`), and its
    /// Chrome trace beside them (`.trace.json`): where a query's time went, task by task.
    #[arg(long, value_name = "DIR")]
    trace: Option<std::path::PathBuf>,
    /// Load `orders` and `lineitem` as generated (ranges of orders, a layout the planner does
    /// not know) instead of hash-partitioned by order key: what the layout is worth.
    #[arg(long)]
    as_generated: bool,
    /// Read the tables from Parquet files instead of generating them: `parquet:DIR` or a store
    /// URL (`s3://bucket/prefix`), one directory per table (`DIR/lineitem/...`), as
    /// `--write-parquet` makes them. Dirk and DataFusion each make external tables over the same
    /// files; credentials for a store come from its environment (`AWS_*`).
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,
    /// Generate the tables and write them as Parquet under this location (a directory or a store
    /// URL), one directory per table, with Dirk's `COPY`; then exit.
    #[arg(long, value_name = "LOCATION")]
    write_parquet: Option<String>,
}

/// The location of the tables' directories that `--source` names.
fn source_location(source: &str) -> Result<String, String> {
    match source.strip_prefix("parquet:") {
        Some(dir) => std::fs::canonicalize(dir)
            .map(|p| p.display().to_string())
            .map_err(|e| format!("--source {source}: {e}")),
        None if source.contains("://") => Ok(source.trim_end_matches('/').to_string()),
        None => Err(format!(
            "--source {source}: give parquet:DIR or a store URL such as s3://bucket/prefix"
        )),
    }
}

/// Makes each TPC-H table an external table over `location/<table>/` with `sql`; seconds taken.
async fn create_external<F, Fut, E>(location: &str, sql: F) -> Result<f64, String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    for t in tpch::TABLES {
        sql(format!(
            "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{location}/{t}/'"
        ))
        .await
        .map_err(|e| format!("{t}: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a statement on Dirk, discarding its result.
async fn dirk_statement(session: &Session, sql: String) -> Result<(), dirk_dtable::DirkError> {
    session.sql(&sql).await?.collect().await.map(|_| ())
}

/// What one run of `sql` read from storage, summed over its tasks.
async fn storage_read(session: &Session, sql: &str) -> Result<dirk_engine::StorageRead, String> {
    session.engine().clear_event_log();
    dirk_rows(session, sql).await?;
    let mut read = dirk_engine::StorageRead::default();
    for r in &session.engine().event_log().records {
        read += r.storage;
    }
    Ok(read)
}

/// Runs `sql` once on `session` with an empty event log and writes what the log then holds.
async fn write_trace(
    session: &Session,
    sql: &str,
    dir: &std::path::Path,
    name: &str,
) -> Result<(), String> {
    session.engine().clear_event_log();
    dirk_rows(session, sql).await?;
    let log = session.engine().event_log();
    let records = serde_json::to_string(&log.records).map_err(|e| e.to_string())?;
    let write = |file: String, text: &str| {
        std::fs::write(dir.join(&file), text).map_err(|e| format!("{file}: {e}"))
    };
    write(format!("{name}.json"), &records)?;
    write(format!("{name}.trace.json"), &log.chrome_trace())
}

/// The plans of `sql` on both systems, for reading why one is slower.
async fn print_plans(session: &Session, ctx: &SessionContext, q: usize, sql: &str) {
    let explain = format!("EXPLAIN {sql}");
    let datafusion = match ctx.sql(&explain).await {
        Ok(df) => df.collect().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let dirk = match session.sql(&explain).await {
        Ok(df) => df.collect().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    for (system, plans) in [("DataFusion", datafusion), ("Dirk", dirk)] {
        let text = plans.and_then(|b| {
            datafusion::arrow::util::pretty::pretty_format_batches(&b)
                .map(|t| t.to_string())
                .map_err(|e| e.to_string())
        });
        match text {
            Ok(t) => eprintln!("q{q:02} on {system}:\n{t}"),
            Err(e) => eprintln!("q{q:02} on {system}: cannot explain: {e}"),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `sql` on a Dirk session: rows returned and seconds taken.
async fn dirk_rows(session: &Session, sql: &str) -> Result<(usize, f64), String> {
    let err = |e: dirk_dtable::DirkError| e.to_string();
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
    Ok((rows, t.elapsed().as_secs_f64()))
}

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    crate::block_on(run_async(args, report))
}

async fn run_async(args: &Args, report: &mut Report) -> Result<(), String> {
    let err = |e: dirk_dtable::DirkError| e.to_string();
    let (in_process, local) = match args.workers.as_deref() {
        None => (None, None),
        Some(w) => match w.strip_prefix("local:") {
            Some(n) => (
                None,
                Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("bad --workers {w}"))?,
                ),
            ),
            None => (
                Some(
                    w.parse::<usize>()
                        .map_err(|_| format!("bad --workers {w}"))?,
                ),
                None,
            ),
        },
    };
    let mut builder = Session::builder();
    if let Some(w) = in_process {
        builder = builder.workers(w);
    }
    let session = builder.build().map_err(err)?;
    let partitions = session.partitions();
    let workers = session.engine().workers().len();
    let layout = if args.as_generated {
        tpch::TpchLayout::AsGenerated
    } else {
        tpch::TpchLayout::ByOrderKey
    };
    let source = args.source.as_deref().map(source_location).transpose()?;
    let started = Instant::now();
    let tables = match &source {
        Some(location) => {
            let s = create_external(location, |sql| dirk_statement(&session, sql)).await?;
            eprintln!(
                "TPC-H from {location}: external tables made in {s:.1} s (read per query by {workers} workers), {partitions} partitions"
            );
            Vec::new()
        }
        None => {
            let tables = session
                .load_tpch_with(args.scale, layout)
                .await
                .map_err(err)?;
            eprintln!(
                "TPC-H SF {}: generated in {:.1} s; {workers} workers, {partitions} partitions, orders and lineitem {layout:?}",
                args.scale,
                started.elapsed().as_secs_f64()
            );
            tables
        }
    };
    if let Some(location) = &args.write_parquet {
        let location = location.trim_end_matches('/');
        for (name, _) in &tables {
            let started = Instant::now();
            dirk_statement(
                &session,
                format!("COPY {name} TO '{location}/{name}/' STORED AS PARQUET"),
            )
            .await
            .map_err(|e| format!("writing {name}: {e}"))?;
            eprintln!(
                "{name}: written to {location}/{name}/ in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    // Dirk on local worker processes: the same total threads as the embedded session.
    let mut _processes = None;
    let cluster = match local {
        Some(n) => {
            let dirk = match &args.dirk {
                Some(p) if p.exists() => p.clone(),
                Some(p) => return Err(format!("{} not found", p.display())),
                None => dirk_dtable::flight::dirk_binary_of_this_build()
                    .map_err(|e| format!("{e}, or pass --dirk"))?,
            };
            let threads = (workers / n).max(1);
            let procs = dirk_dtable::flight::LocalWorkers::start(&dirk, n, threads)
                .map_err(|e| e.to_string())?;
            let cluster = Session::builder()
                .workers(procs.addresses())
                .token(procs.token())
                .build()
                .map_err(err)?;
            let started = Instant::now();
            match &source {
                Some(location) => {
                    create_external(location, |sql| dirk_statement(&cluster, sql)).await?;
                }
                None => {
                    cluster
                        .load_tpch_with(args.scale, layout)
                        .await
                        .map_err(err)?;
                }
            }
            eprintln!(
                "on {n} worker processes ({threads} threads each): ready in {:.1} s, {} partitions",
                started.elapsed().as_secs_f64(),
                cluster.partitions()
            );
            _processes = Some(procs);
            Some(cluster)
        }
        None => None,
    };
    // DataFusion gets the very same batches, partition for partition; or the same files.
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    if let Some(location) = &source {
        if let Ok(url) = url::Url::parse(location) {
            if url.scheme() == "s3" {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(url.host_str().unwrap_or_default())
                    .build()
                    .map_err(|e| e.to_string())?;
                ctx.register_object_store(&url, Arc::new(store));
            }
        }
        let s = create_external(location, |sql| {
            let ctx = ctx.clone();
            async move { ctx.sql(&sql).await.map(|_| ()) }
        })
        .await?;
        eprintln!(
            "DataFusion: external tables over the same files made in {s:.1} s (read per query)"
        );
    }
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

    if cluster.is_some() {
        println!("| query | Dirk s | Dirk cluster s | DataFusion s | Dirk / DataFusion | cluster / DataFusion | cluster / Dirk |");
        println!("|---|---|---|---|---|---|---|");
    } else if source.is_some() {
        println!("| query | Dirk s | DataFusion s | Dirk / DataFusion | Dirk read MB (requests) |");
        println!("|---|---|---|---|---|");
    } else {
        println!("| query | Dirk s | DataFusion s | Dirk / DataFusion |");
        println!("|---|---|---|---|");
    }
    // Sums of log ratios: Dirk / DataFusion, cluster / DataFusion, cluster / Dirk.
    let mut logs = [0.0f64; 3];
    let mut counted = 0;
    let mut worst = (0.0f64, 0usize);
    for (i, sql) in tpch::QUERIES.iter().enumerate() {
        let q = i + 1;
        if !args.queries.is_empty() && !args.queries.contains(&q) {
            continue;
        }
        if args.explain {
            print_plans(&session, &ctx, q, sql).await;
        }
        let mut dirk = Vec::new();
        let mut on_cluster = Vec::new();
        let mut df = Vec::new();
        for run in 0..=args.runs {
            let (rows, dirk_s) = dirk_rows(&session, sql).await?;
            let cluster_s = match &cluster {
                Some(c) => {
                    let (cluster_rows, s) = dirk_rows(c, sql).await?;
                    if cluster_rows != rows {
                        return Err(format!(
                            "q{q:02}: Dirk returned {rows} rows embedded, {cluster_rows} on the cluster"
                        ));
                    }
                    s
                }
                None => 0.0,
            };
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
                on_cluster.push(cluster_s);
                df.push(df_s);
            }
        }
        if let Some(dir) = &args.trace {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            write_trace(&session, sql, dir, &format!("q{q:02}-dirk")).await?;
            if let Some(c) = &cluster {
                write_trace(c, sql, dir, &format!("q{q:02}-cluster")).await?;
            }
        }
        let (d, c, f) = (median(dirk), median(on_cluster), median(df));
        let ratio = d / f;
        logs[0] += ratio.ln();
        logs[1] += (c / f).ln();
        logs[2] += (c / d).ln();
        counted += 1;
        if ratio > worst.0 {
            worst = (ratio, q);
        }
        if cluster.is_some() {
            println!(
                "| q{q:02} | {d:.3} | {c:.3} | {f:.3} | {ratio:.2} | {:.2} | {:.2} |",
                c / f,
                c / d
            );
        } else if source.is_some() {
            let read = storage_read(&session, sql).await?;
            println!(
                "| q{q:02} | {d:.3} | {f:.3} | {ratio:.2} | {:.1} ({}) |",
                read.bytes as f64 / 1e6,
                read.requests
            );
        } else {
            println!("| q{q:02} | {d:.3} | {f:.3} | {ratio:.2} |");
        }
        let mut systems = vec![("dirk", d), ("datafusion", f)];
        if cluster.is_some() {
            systems.push(("dirk-cluster", c));
        }
        for (system, value) in systems {
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
        let mean = |l: f64| (l / counted as f64).exp();
        println!(
            "\ngeometric mean Dirk / DataFusion: {:.2} over {counted} queries (worst: q{:02} at {:.2})",
            mean(logs[0]),
            worst.1,
            worst.0
        );
        let mut means = vec![("dirk/datafusion", mean(logs[0]))];
        if cluster.is_some() {
            println!(
                "geometric mean cluster / DataFusion: {:.2}; cluster / embedded Dirk: {:.2}",
                mean(logs[1]),
                mean(logs[2])
            );
            means.push(("dirk-cluster/datafusion", mean(logs[1])));
            means.push(("dirk-cluster/dirk", mean(logs[2])));
        }
        for (system, value) in means {
            report.add(Row {
                suite: "tpch",
                case: "geomean".into(),
                system,
                metric: "ratio",
                value,
                unit: "x",
            });
        }
    }
    Ok(())
}
