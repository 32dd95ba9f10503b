//! `dirk worker` and `dirk cluster --local N`.

use crate::WorkerArgs;
use dirk_dtable::flight::{self, LocalWorkers, WorkerOptions, WorkerServer};
use dirk_dtable::Session;
use dirk_engine::WorkerId;
use parking_lot::Mutex;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Runs a worker process until it is killed (or, with `--exit-with-stdin`, until its standard
/// input closes).
pub(crate) fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.failpoints {
        dirk_dtable::set_failpoints(spec).map_err(|e| anyhow::anyhow!("--failpoints: {e}"))?;
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
    };
    let tls_identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    let tls_ca = args.tls_ca.as_deref().map(read).transpose()?;
    let token = flight::resolve_token(args.token.clone())?;
    let options = WorkerOptions {
        threads: args.threads,
        token,
        insecure: args.insecure,
        tls_identity,
        tls_ca,
        memory_limit: args.memory_limit,
        spill_dir: args.spill_dir.clone(),
        ..WorkerOptions::default()
    };
    let registry = Arc::new(dirk_engine::KernelRegistry::with_builtins());
    dirk_dtable::register_kernels(&registry);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dirk-worker-io")
        .enable_all()
        .build()?;
    let open = options.token.is_none();
    runtime.block_on(async move {
        let server = WorkerServer::start(&args.listen, registry, options).await?;
        let addr = server.local_addr();
        let mut out = std::io::stdout();
        writeln!(out, "{}", flight::listening_line(addr))?;
        out.flush()?;
        if open {
            eprintln!("warning: --insecure: any user of this machine can run tasks on {addr}");
        }
        if args.exit_with_stdin {
            std::thread::spawn(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                std::process::exit(0);
            });
        }
        server.wait().await?;
        Ok(())
    })
}

/// `dirk cluster --local N`: worker processes on loopback, stopped when the shell exits. A
/// worker process that dies is replaced (see [`LocalCluster::supervise`]).
pub(crate) struct LocalCluster {
    workers: Arc<Mutex<LocalWorkers>>,
}

/// How often the supervisor looks for worker processes that have exited.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

impl LocalCluster {
    /// Starts `n` worker processes. Each gets `memory_limit` as its budget, or by default an
    /// equal share of the machine's ([`dirk_engine::default_budget`]), and `spill_dir`.
    pub(crate) fn start(
        n: usize,
        threads: Option<usize>,
        memory_limit: Option<u64>,
        spill_dir: Option<&Path>,
    ) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(n > 0, "--local needs at least one worker");
        let cores = std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1);
        let exe = std::env::current_exe()?;
        let mut args = Vec::new();
        if let Some(limit) = memory_limit.or(dirk_engine::default_budget(n).map(|b| b as u64)) {
            args.extend(["--memory-limit".to_string(), limit.to_string()]);
        }
        if let Some(dir) = spill_dir {
            args.extend(["--spill-dir".to_string(), dir.display().to_string()]);
        }
        let workers =
            LocalWorkers::start_with_args(&exe, n, threads.unwrap_or((cores / n).max(1)), &args)?;
        eprintln!(
            "started {n} local workers: {}",
            workers.addresses().join(", ")
        );
        Ok(LocalCluster {
            workers: Arc::new(Mutex::new(workers)),
        })
    }

    pub(crate) fn addresses(&self) -> Vec<String> {
        self.workers.lock().addresses()
    }

    pub(crate) fn token(&self) -> String {
        self.workers.lock().token().to_string()
    }

    /// Watches the worker processes of `session` (started on this cluster's addresses, in
    /// order): one that exits is declared lost to the session at once, a new process takes its
    /// place and joins the session. Stops when the cluster is dropped.
    pub(crate) fn supervise(&self, session: Session, runtime: tokio::runtime::Handle) {
        let workers = Arc::downgrade(&self.workers);
        let mut ids: Vec<WorkerId> = (0..self.workers.lock().pids().len())
            .map(|i| WorkerId(i as u32))
            .collect();
        std::thread::spawn(move || loop {
            std::thread::sleep(SUPERVISE_EVERY);
            let Some(workers) = workers.upgrade() else {
                return;
            };
            let replaced = workers.lock().replace_exited();
            match replaced {
                Ok(replaced) => {
                    for (i, address) in replaced {
                        let _ = session.engine().remove_worker(ids[i], "its process exited");
                        match runtime.block_on(session.add_worker(&address)) {
                            Ok(id) => {
                                eprintln!(
                                    "{} exited; a new worker process at {address} joined as {id}",
                                    ids[i]
                                );
                                ids[i] = id;
                            }
                            Err(e) => eprintln!("error: a replacement worker did not join: {e}"),
                        }
                    }
                }
                Err(e) => eprintln!("error: cannot replace a worker process: {e}"),
            }
        });
    }
}
