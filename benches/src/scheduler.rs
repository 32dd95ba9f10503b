//! The scheduler suite: no-op task graphs of four shapes, through Dirk and through tokio and
//! rayon, reporting tasks per second, microseconds per task and peak memory. `--busy N` runs
//! every case again beside N low-priority CPU-bound threads (a shared node's normal state) and
//! reports Dirk's busy figure against its idle one; `--check US` runs Dirk alone and fails when
//! any shape takes more than US microseconds per task on an idle machine.

use crate::report::{peak_rss, reset_peak_rss, Report, Row};
use dirk_engine::{Arg, Chunk, Context, TaskHandle, TaskOptions};
use std::time::Instant;

/// Options of the scheduler suite.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Task counts to run each shape with.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    tasks: Vec<usize>,
    /// In-process workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Also run every case beside this many low-priority (nice 19) CPU-bound threads.
    #[arg(long, value_name = "N", default_value_t = 0)]
    busy: usize,
    /// Run Dirk only, and exit non-zero when any shape takes more µs per task than this, idle.
    #[arg(long, value_name = "US")]
    check: Option<f64>,
    /// Internal: run one case (`SYSTEM:SHAPE:N`) in this process and print its result as JSON.
    /// The runner starts a child process per case so peak memory is measured per case.
    #[arg(long, hide = true)]
    one: Option<String>,
}

#[derive(Clone, Copy)]
enum Shape {
    Independent,
    Chain,
    FanOutIn,
    Datadeps64,
}

impl Shape {
    fn parse(s: &str) -> Option<Shape> {
        [
            Shape::Independent,
            Shape::Chain,
            Shape::FanOutIn,
            Shape::Datadeps64,
        ]
        .into_iter()
        .find(|sh| sh.name() == s)
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Independent => "independent",
            Shape::Chain => "chain",
            Shape::FanOutIn => "fanout",
            Shape::Datadeps64 => "datadeps64",
        }
    }
}

const FAN: usize = 100;
const SHARED: usize = 64;

pub(crate) fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.unwrap_or(cores);
    if let Some(one) = &args.one {
        return run_one(one, workers, cores);
    }
    println!("scheduler suite: {workers} in-process workers, {cores} cores; no-op tasks\n");
    println!(
        "{:<22} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "case", "system", "tasks/s", "us/task", "vs tokio", "peak MB"
    );
    let idle = run_cases(args, report, workers, "")?;
    if args.busy > 0 {
        println!("\nbeside {} low-priority CPU-bound threads:", args.busy);
        let load = BusyThreads::start(args.busy);
        let busy = run_cases(args, report, workers, "-busy")?;
        drop(load);
        println!(
            "\n{:<22} {:>10} {:>10} {:>10}",
            "dirk", "idle us", "busy us", "busy/idle"
        );
        for ((case, i), (_, b)) in idle.iter().zip(&busy) {
            println!("{case:<22} {:>10.3} {:>10.3} {:>10.2}", i, b, b / i);
        }
    }
    // The idle figures: a busy neighbour's share of the machine is not the scheduler's to keep.
    if let Some(bound) = args.check {
        let over: Vec<String> = idle
            .iter()
            .filter(|(_, us)| *us > bound)
            .map(|(case, us)| format!("{case} {us:.2} µs"))
            .collect();
        if !over.is_empty() {
            return Err(format!(
                "scheduler check: above {bound} µs per task: {}",
                over.join(", ")
            ));
        }
        println!("\nscheduler check: every shape within {bound} µs per task");
    }
    Ok(())
}

/// Runs every case (Dirk alone under `--check`); Dirk's µs per task by case.
fn run_cases(
    args: &Args,
    report: &mut Report,
    workers: usize,
    suffix: &str,
) -> Result<Vec<(String, f64)>, String> {
    let mut dirk = Vec::new();
    for &n in &args.tasks {
        for shape in [
            Shape::Independent,
            Shape::Chain,
            Shape::FanOutIn,
            Shape::Datadeps64,
        ] {
            let case = format!("{}-{n}{suffix}", shape.name());
            let tokio_s = match args.check {
                Some(_) => None,
                None => {
                    let t = measure(report, &case, "tokio", None, shape, n, workers)?;
                    measure(report, &case, "rayon", Some(t), shape, n, workers)?;
                    Some(t)
                }
            };
            let us = measure(report, &case, "dirk", tokio_s, shape, n, workers)? * 1e6;
            dirk.push((case, us));
        }
    }
    Ok(dirk)
}

/// CPU-bound threads at the lowest priority, spinning until dropped.
struct BusyThreads {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyThreads {
    fn start(n: usize) -> BusyThreads {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    lowest_priority();
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        BusyThreads { stop, threads }
    }
}

impl Drop for BusyThreads {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Gives the calling thread nice 19 (on Linux, a thread's own priority).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on the calling thread, with no pointers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Runs one case in this process and prints `{"tasks", "secs", "peak"}`.
fn run_one(spec: &str, workers: usize, cores: usize) -> Result<(), String> {
    let bad = || format!("bad case `{spec}`: want SYSTEM:SHAPE:N");
    let mut parts = spec.split(':');
    let (Some(system), Some(shape), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let shape = Shape::parse(shape).ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    reset_peak_rss();
    let (tasks, secs) = match system {
        "tokio" => tokio_shape(shape, n, cores),
        "rayon" => rayon_shape(shape, n, cores),
        "dirk" => dirk_shape(shape, n, workers),
        _ => return Err(bad()),
    };
    let peak = peak_rss();
    println!(
        "{}",
        serde_json::json!({"tasks": tasks, "secs": secs, "peak": peak})
    );
    Ok(())
}

/// Runs one case in a child process, prints a row and records it. Returns seconds per task.
fn measure(
    report: &mut Report,
    case: &str,
    system: &'static str,
    floor_s: Option<f64>,
    shape: Shape,
    n: usize,
    workers: usize,
) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args(["scheduler", "--workers", &workers.to_string(), "--one"])
        .arg(format!("{system}:{}:{n}", shape.name()))
        .output()
        .map_err(|e| format!("cannot start a benchmark process: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{case} on {system} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{case} on {system}: bad output: {e}"))?;
    let tasks = v["tasks"].as_u64().unwrap_or(0) as usize;
    let secs = v["secs"].as_f64().unwrap_or(f64::NAN);
    let peak = v["peak"].as_u64().unwrap_or(0);
    let per_task = secs / tasks.max(1) as f64;
    let ratio = match (system, floor_s) {
        ("tokio", _) => "1.00".to_string(),
        (_, Some(t)) => format!("{:.2}", per_task / t),
        (_, None) => "-".to_string(),
    };
    println!(
        "{case:<22} {system:>10} {:>12.0} {:>10.3} {ratio:>10} {:>12.1}",
        tasks as f64 / secs,
        per_task * 1e6,
        peak as f64 / 1e6
    );
    for (metric, value, unit) in [
        ("tasks_per_s", tasks as f64 / secs, "1/s"),
        ("us_per_task", per_task * 1e6, "us"),
        ("peak_rss", peak as f64, "bytes"),
    ] {
        report.add(Row {
            suite: "scheduler",
            case: case.to_string(),
            system,
            metric,
            value,
            unit,
        });
    }
    Ok(per_task)
}

fn dirk_shape(shape: Shape, n: usize, workers: usize) -> (usize, f64) {
    let ctx = Context::builder()
        .workers(workers)
        .build()
        .expect("context");
    let shared: Vec<_> = (0..SHARED)
        .map(|_| ctx.put(Chunk::empty()).expect("put"))
        .collect();
    ctx.wait_idle().expect("idle");
    let start = Instant::now();
    let mut tasks = 0;
    let noop = |opts: TaskOptions| ctx.spawn("noop", vec![], opts);
    match shape {
        Shape::Independent => {
            for _ in 0..n {
                noop(TaskOptions::new());
            }
            tasks = n;
        }
        Shape::Chain => {
            let mut prev: Option<TaskHandle> = None;
            for _ in 0..n {
                let opts = match &prev {
                    Some(p) => TaskOptions::new().after(p),
                    None => TaskOptions::new(),
                };
                prev = Some(noop(opts));
            }
            tasks = n;
        }
        Shape::FanOutIn => {
            for _ in 0..n / FAN {
                let maps: Vec<TaskHandle> = (0..FAN).map(|_| noop(TaskOptions::new())).collect();
                let opts = maps.iter().fold(TaskOptions::new(), |o, m| o.after(m));
                noop(opts);
                tasks += FAN + 1;
            }
        }
        Shape::Datadeps64 => {
            for i in 0..n {
                let c = &shared[i % SHARED];
                ctx.spawn("noop", vec![Arg::read_write(c)], TaskOptions::new());
            }
            tasks = n;
        }
    }
    ctx.wait_idle().expect("idle");
    let secs = start.elapsed().as_secs_f64();
    (tasks, secs)
}

fn tokio_shape(shape: Shape, n: usize, threads: usize) -> (usize, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let start = Instant::now();
        let mut tasks = 0;
        match shape {
            Shape::Independent => {
                let hs: Vec<_> = (0..n).map(|_| tokio::spawn(async {})).collect();
                for h in hs {
                    h.await.expect("join");
                }
                tasks = n;
            }
            Shape::Chain => {
                let mut prev = tokio::spawn(async {});
                for _ in 1..n {
                    let p = prev;
                    prev = tokio::spawn(async move {
                        p.await.expect("join");
                    });
                }
                prev.await.expect("join");
                tasks = n;
            }
            Shape::FanOutIn => {
                let mut reduces = Vec::new();
                for _ in 0..n / FAN {
                    let maps: Vec<_> = (0..FAN).map(|_| tokio::spawn(async {})).collect();
                    reduces.push(tokio::spawn(async move {
                        for m in maps {
                            m.await.expect("join");
                        }
                    }));
                    tasks += FAN + 1;
                }
                for r in reduces {
                    r.await.expect("join");
                }
            }
            Shape::Datadeps64 => {
                // Each shared datum is a chain: a task waits for the previous task on its datum.
                let mut last: Vec<Option<tokio::task::JoinHandle<()>>> =
                    (0..SHARED).map(|_| None).collect();
                for i in 0..n {
                    let p = last[i % SHARED].take();
                    last[i % SHARED] = Some(tokio::spawn(async move {
                        if let Some(p) = p {
                            p.await.expect("join");
                        }
                    }));
                }
                for h in last.into_iter().flatten() {
                    h.await.expect("join");
                }
                tasks = n;
            }
        }
        (tasks, start.elapsed().as_secs_f64())
    })
}

fn rayon_shape(shape: Shape, n: usize, threads: usize) -> (usize, f64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let start = Instant::now();
        let tasks = match shape {
            Shape::Independent => {
                rayon::scope(|s| {
                    for _ in 0..n {
                        s.spawn(|_| {});
                    }
                });
                n
            }
            Shape::Chain => {
                fn step(s: &rayon::Scope<'_>, left: usize) {
                    if left > 0 {
                        s.spawn(move |s| step(s, left - 1));
                    }
                }
                rayon::scope(|s| step(s, n));
                n
            }
            Shape::FanOutIn => {
                // Maps then, after a barrier, reduces.
                rayon::scope(|s| {
                    for _ in 0..(n / FAN) * FAN {
                        s.spawn(|_| {});
                    }
                });
                rayon::scope(|s| {
                    for _ in 0..n / FAN {
                        s.spawn(|_| {});
                    }
                });
                (n / FAN) * (FAN + 1)
            }
            Shape::Datadeps64 => {
                fn step(s: &rayon::Scope<'_>, left: usize) {
                    if left > 0 {
                        s.spawn(move |s| step(s, left - 1));
                    }
                }
                rayon::scope(|s| {
                    for i in 0..SHARED {
                        let len = n / SHARED + usize::from(i < n % SHARED);
                        step(s, len);
                    }
                });
                n
            }
        };
        (tasks, start.elapsed().as_secs_f64())
    })
}
