//! `flight`: chunk transfer between two workers over Arrow Flight on loopback, against a plain
//! memory copy of the same bytes on this machine.
//!
//! Two `WorkerServer`s run in this process, but every byte between them goes through gRPC over
//! loopback TCP and the Arrow IPC encoding, as between processes: a task placed on worker 1
//! reads chunks that worker 0 holds, so worker 1 fetches them from worker 0 with `do_get`.

use crate::report::{Report, Row};
use datafusion::arrow::array::{Array, ArrayData, Int64Array, RecordBatch, StringViewArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use dirk_dtable::flight::{connect_cluster, ClientOptions, WorkerOptions, WorkerServer};
use dirk_engine::{Arg, Chunk, Context, FnKernel, KernelRegistry, Scope, TaskOptions, WorkerId};
use std::sync::Arc;
use std::time::Instant;

/// Options of the `flight` suite.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Size of the one big chunk, in MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: usize,
    /// How many small chunks, of 1 MiB each.
    #[arg(long, default_value_t = 1000)]
    small: usize,
    /// Timed runs of each case (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn ints(n: usize, start: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    let values = Int64Array::from_iter_values(start..start + n as i64);
    RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("one Int64 column")
}

/// About 1 MiB of string values (`Utf8View`, 24 to 31 bytes each, so none is inlined in its
/// view), like the names and comments a TPC-H shuffle moves: every string arriving is a string
/// the receiver may have to validate.
fn strings(start: usize) -> RecordBatch {
    strings_batch(start, 26_000)
}

/// `rows` strings as in [`strings`].
fn strings_batch(start: usize, rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "s",
        DataType::Utf8View,
        false,
    )]));
    let values: StringViewArray = (start..start + rows)
        .map(|i| format!("Customer#{i:015}{}", "x".repeat(i % 8)))
        .map(Some)
        .collect();
    RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("one Utf8View column")
}

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    crate::block_on(run_async(args, report))
}

async fn run_async(args: &Args, report: &mut Report) -> Result<(), String> {
    let registry = KernelRegistry::with_builtins();
    // Reads its inputs (they must be here, so they are fetched) and returns nothing.
    registry.register(FnKernel::new("touch", |call| {
        let rows: u64 = (0..call.num_inputs()).map(|i| call.input(i).rows()).sum();
        std::hint::black_box(rows);
        Ok(vec![])
    }));
    let registry = Arc::new(registry);
    let token = dirk_dtable::flight::random_token();
    let options = WorkerOptions {
        threads: Some(1),
        token: Some(token.clone()),
        ..WorkerOptions::default()
    };
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            WorkerServer::start("127.0.0.1:0", registry.clone(), options.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let addresses: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
    let client = ClientOptions {
        token: Some(token),
        ..ClientOptions::default()
    };
    let workers = connect_cluster(&addresses, &client)
        .await
        .map_err(|e| e.to_string())?;
    let (big_mib, small, runs) = (args.big_mib, args.small, args.runs.max(1));
    let rows = tokio::task::spawn_blocking(move || measure(workers, big_mib, small, runs))
        .await
        .map_err(|e| e.to_string())??;
    println!(
        "Flight between two workers on loopback (gRPC over TCP, Arrow IPC), against memcpy of the same bytes"
    );
    println!(
        "(median of {runs} timed runs after a warm-up; the slowest and fastest run in brackets)"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>16} {:>14}",
        "case", "MiB", "seconds", "Flight GB/s", "(min - max)", "memcpy GB/s"
    );
    for Measured {
        case,
        mib,
        seconds,
        memcpy_gbs,
    } in rows
    {
        let rate = |s: f64| mib as f64 * 1048576.0 / s / 1e9;
        let gbs = rate(median(&seconds));
        let slowest = rate(seconds.iter().cloned().fold(0.0, f64::max));
        let fastest = rate(seconds.iter().cloned().fold(f64::INFINITY, f64::min));
        let spread = format!("({slowest:.2} - {fastest:.2})");
        println!(
            "{case:<28} {mib:>10} {:>10.3} {gbs:>12.2} {spread:>16} {memcpy_gbs:>14.2}",
            median(&seconds)
        );
        for (system, metric, value, unit) in [
            ("dirk-flight", "gb_per_s", gbs, "GB/s"),
            ("memcpy", "gb_per_s", memcpy_gbs, "GB/s"),
        ] {
            report.add(Row {
                suite: "flight",
                case: case.clone(),
                system,
                metric,
                value,
                unit,
            });
        }
    }
    for s in servers {
        s.stop().await;
    }
    Ok(())
}

/// One case's timings.
struct Measured {
    case: String,
    mib: usize,
    /// Seconds of each timed run.
    seconds: Vec<f64>,
    memcpy_gbs: f64,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(
    workers: Vec<Arc<dirk_dtable::flight::RemoteWorker>>,
    big_mib: usize,
    small: usize,
    runs: usize,
) -> Result<Vec<Measured>, String> {
    let ctx = Context::builder()
        .workers(0)
        .build()
        .map_err(|e| e.to_string())?;
    for w in workers {
        ctx.add_worker(w).map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    let cases: [(String, Vec<RecordBatch>); 4] = [
        (
            format!("one {big_mib} MiB chunk"),
            vec![ints(big_mib << 17, 0)],
        ),
        (
            format!("{small} chunks of 1 MiB"),
            (0..small).map(|_| ints(1 << 17, 0)).collect(),
        ),
        (
            format!("{small} chunks of 1 MiB strings"),
            (0..small).map(|i| strings(i * 26_000)).collect(),
        ),
        (
            // As a table partition is: one batch, which goes in 2 MiB pieces.
            format!("one {} MiB batch of strings", big_mib / 8),
            vec![strings_batch(0, 26_000 * (big_mib / 8).max(1))],
        ),
    ];
    for (case, batches) in cases {
        let memcpy_gbs = memcpy_rate(&batches);
        let mut seconds = Vec::new();
        for run in 0..=runs {
            // Put afresh each run, so that no run can find a chunk the one before moved.
            let mut chunks = Vec::new();
            for b in &batches {
                chunks.push(
                    ctx.put_on(WorkerId(0), Chunk::from_batch(b.clone()), false)
                        .map_err(|e| e.to_string())?,
                );
            }
            let started = Instant::now();
            let task = ctx.spawn(
                "touch",
                chunks.iter().map(Arg::read).collect(),
                TaskOptions::new().scope(Scope::worker(WorkerId(1))),
            );
            task.wait().map_err(|e| e.to_string())?;
            if run > 0 {
                seconds.push(started.elapsed().as_secs_f64());
            }
            ctx.free(&chunks).map_err(|e| e.to_string())?;
        }
        // The values moved, as a transfer counts them (views and the string bytes they use).
        let bytes: u64 = batches
            .iter()
            .map(|b| Chunk::from_batch(b.clone()).data_bytes())
            .sum();
        let mib = (bytes / 1048576) as usize;
        out.push(Measured {
            case,
            mib,
            seconds,
            memcpy_gbs,
        });
    }
    Ok(out)
}

/// GB/s of copying the batches' buffers into fresh ones, on this machine.
fn memcpy_rate(batches: &[RecordBatch]) -> f64 {
    fn copy(data: &ArrayData) -> usize {
        let mut bytes = 0;
        for b in data.buffers() {
            let copied = b.as_slice().to_vec();
            bytes += copied.len();
            std::hint::black_box(copied);
        }
        bytes + data.child_data().iter().map(copy).sum::<usize>()
    }
    let started = Instant::now();
    let bytes: usize = batches
        .iter()
        .flat_map(|b| b.columns())
        .map(|c| copy(&c.to_data()))
        .sum();
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}
