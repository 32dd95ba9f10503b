//! `dirk-benches`: Dirk's benchmark runner. Each suite prints the comparison it exists for, side by
//! side, in one run; `--json FILE` also writes one JSON object per line
//! (`{"suite", "case", "system", "metric", "value", "unit"}`) for comparisons across commits.
//!
//! ```text
//! cargo run --release -p dirk-benches -- scheduler [--tasks 100000,1000000] [--json out.jsonl]
//! cargo run --release -p dirk-benches -- tpch --scale 1 [--runs 3] [--queries 1,6] [--explain] [--as-generated] [--json out.jsonl]
//! cargo run --release -p dirk-benches -- mutation [--rows 50000000] [--json out.jsonl]
//! cargo run --release -p dirk-benches -- flight [--big-mib 1024] [--small 1000] [--runs 3]
//! cargo run --release -p dirk-benches -- gpu [--rows 100000000] [--emulate]
//! cargo run --release -p dirk-benches -- failover --scale 1 [--workers 3] [--queries 1,6]
//! ```

/// Dirk's binaries use mimalloc: tasks allocate on one thread and free on another, where it is
/// markedly faster than the system allocator. Here it counts bytes too (peak memory per case).
#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

mod alloc;
#[path = "../../sql/src/allocator.rs"]
mod allocator;
mod failover;
mod flight;
mod gpu;
mod mutation;
mod report;
mod scheduler;
mod tpch;

use clap::{Parser, Subcommand};
use report::Report;

#[derive(Parser)]
#[command(about = "Dirk benchmarks: each suite compares Dirk with a baseline in the same run")]
struct Cli {
    /// Also write results as JSON lines to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Task overhead: no-op task graphs through Dirk's scheduler, against tokio::spawn and
    /// rayon::scope as the floor.
    Scheduler(scheduler::Args),
    /// TPC-H's 22 queries through Dirk and through DataFusion on one node, same data.
    Tpch(tpch::Args),
    /// In-place UPDATE / DELETE / INSERT / ADD COLUMN against DataFusion's out-of-place
    /// rewrite (CREATE TABLE AS SELECT) of the same table.
    Mutation(mutation::Args),
    /// Chunk transfer between two workers over Arrow Flight on loopback.
    Flight(flight::Args),
    /// TPC-H on worker processes, each query as is and with a worker killed halfway through.
    Failover(failover::Args),
    /// Filter + SUM and grouped aggregation on GPU-resident data against DataFusion on all
    /// cores, with the device's copy bandwidth as the ceiling.
    Gpu(gpu::Args),
}

/// Runs a suite's async body on a multi-threaded tokio runtime.
fn block_on(suite: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(suite)
}

fn main() {
    allocator::configure();
    let cli = Cli::parse();
    let mut report = Report::new(cli.json.as_deref());
    let result = match cli.suite {
        Suite::Scheduler(args) => scheduler::run(&args, &mut report),
        Suite::Tpch(args) => tpch::run(&args, &mut report),
        Suite::Mutation(args) => mutation::run(&args, &mut report),
        Suite::Flight(args) => flight::run(&args, &mut report),
        Suite::Gpu(args) => gpu::run(&args, &mut report),
        Suite::Failover(args) => failover::run(&args, &mut report),
    };
    if let Err(e) = result.and_then(|_| report.finish()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
