//! Failover: TPC-H on local `dirk worker` processes, each query run as is and then with one
//! worker killed (SIGKILL) halfway through, a fresh process joining in its place. The answer
//! must be the same; the ratio of the times is what losing a worker costs a query: its running
//! tasks run again elsewhere, and the chunks it held (table partitions and the query's own) are
//! rebuilt from their lineage.

use crate::report::{Report, Row};
use datafusion::arrow::util::pretty::pretty_format_batches;
use dirk_dtable::{tpch, Session};
use std::time::{Duration, Instant};

/// Arguments of the `failover` suite.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Scale factor.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// CPU threads per worker process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The `dirk` binary to start workers from (default: the one beside this binary).
    #[arg(long)]
    dirk: Option<std::path::PathBuf>,
    /// Only these queries, e.g. `1,6,18`.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
}

/// Runs `sql`: its result as text (sorted lines, so that row order does not matter) and the
/// time it took.
async fn answer(session: &Session, sql: &str) -> Result<(String, f64), String> {
    let started = Instant::now();
    let batches = session
        .sql(sql)
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let took = started.elapsed().as_secs_f64();
    let text = pretty_format_batches(&batches)
        .map_err(|e| e.to_string())?
        .to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    Ok((lines.join("\n"), took))
}

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    crate::block_on(run_async(args, report))
}

async fn run_async(args: &Args, report: &mut Report) -> Result<(), String> {
    let dirk = match &args.dirk {
        Some(p) => p.clone(),
        None => dirk_dtable::flight::dirk_binary_of_this_build().map_err(|e| e.to_string())?,
    };
    let mut workers = dirk_dtable::flight::LocalWorkers::start(&dirk, args.workers, args.threads)
        .map_err(|e| e.to_string())?;
    let session = std::sync::Arc::new(
        Session::builder()
            .workers(workers.addresses())
            .token(workers.token())
            .build()
            .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    session
        .load_tpch(args.scale)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "TPC-H SF {} on {} worker processes ({} threads each): {:.1} s",
        args.scale,
        args.workers,
        args.threads,
        started.elapsed().as_secs_f64()
    );
    let queries: Vec<usize> = if args.queries.is_empty() {
        (1..=22).collect()
    } else {
        args.queries.clone()
    };
    println!("query | as is (s) | worker killed (s) | ratio | same answer");
    let mut ratios = Vec::new();
    for (n, q) in queries.iter().enumerate() {
        let sql = tpch::QUERIES
            .get(q.wrapping_sub(1))
            .ok_or_else(|| format!("no TPC-H query {q}"))?;
        // As is: a warm-up, then the timed run.
        answer(&session, sql).await?;
        let (want, plain) = answer(&session, sql).await?;
        // The same query again, with worker n (in turn) killed halfway through.
        let s = session.clone();
        let run = tokio::spawn(async move { answer(&s, sql).await });
        tokio::time::sleep(Duration::from_secs_f64(plain / 2.0)).await;
        let victim = n % args.workers;
        workers.kill(victim);
        for (_, address) in workers.replace_exited().map_err(|e| e.to_string())? {
            session
                .add_worker(&address)
                .await
                .map_err(|e| e.to_string())?;
        }
        let (got, killed) = run
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("q{q:02} with a worker killed: {e}"))?;
        // What the lost worker held is rebuilt in the background: wait for it, so that the
        // next query's run as is does not pay for it.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut rebuilt = false;
        while !rebuilt && Instant::now() < deadline {
            for notice in session.engine().take_notices() {
                eprintln!("q{q:02}: {notice}");
                rebuilt |= matches!(notice, dirk_engine::Notice::Rebuilt { .. });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let same = got == want;
        let ratio = killed / plain;
        ratios.push(ratio);
        println!("q{q:02} | {plain:.3} | {killed:.3} | {ratio:.2} | {same}");
        if !same {
            return Err(format!(
                "q{q:02}: the answer changed when a worker was killed"
            ));
        }
        for (system, value) in [("as is", plain), ("worker killed", killed)] {
            report.add(Row {
                suite: "failover",
                case: format!("q{q:02}"),
                system,
                metric: "time",
                value,
                unit: "s",
            });
        }
    }
    let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    println!("ratio with a worker killed: geometric mean {geo:.2}, worst {worst:.2}");
    Ok(())
}
