//! `dirk`: the SQL shell on an embedded Dirk session (in-process workers) or attached to worker
//! processes; `dirk worker` is such a process.
//!
//! ```text
//! dirk --tpch 0.1                      # shell with TPC-H SF 0.1 loaded
//! dirk worker --listen 0.0.0.0:7070    # a worker process (on each machine)
//! dirk --workers h1:7070,h2:7070       # a shell attached to workers
//! dirk cluster --local 3 --tpch 0.1    # three local worker processes and a shell
//! dirk -c "SELECT 1" -c "SELECT 2"     # run statements and exit
//! dirk -f script.sql --format csv      # run a file
//! echo "SELECT 1;" | dirk              # non-interactive when stdin is not a terminal
//! ```

mod allocator;
mod cluster;
mod progress;
mod shell;
mod statements;

use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Dirk's binaries use mimalloc: tasks allocate on one thread and free on another.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned table.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "dirk",
    version,
    about = "Dirk: a distributed dataframe engine with a SQL front end",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    shell: ShellArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Start a worker process that serves Arrow Flight; drivers attach with --workers.
    Worker(WorkerArgs),
    /// Start N local worker processes and a shell attached to them (stops them on exit).
    Cluster {
        /// How many worker processes.
        #[arg(long, value_name = "N")]
        local: usize,
        /// CPU threads per worker process (default: cores / N, at least 1).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        shell: ShellArgs,
    },
}

/// The shell's options (also after `dirk cluster --local N`).
#[derive(clap::Args, Debug, Clone)]
struct ShellArgs {
    /// In-process workers (default: one per core).
    #[arg(long, conflicts_with = "workers")]
    local_workers: Option<usize>,
    /// Attach to `dirk worker` processes instead: HOST:PORT,HOST:PORT,...
    #[arg(long, value_delimiter = ',', value_name = "ADDRESSES")]
    workers: Vec<String>,
    /// The token the workers require (default: the DIRK_TOKEN environment variable).
    #[arg(long)]
    token: Option<String>,
    /// TLS to the workers: the certificate authority (PEM file) that signed their certificates.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// TLS: the name to verify worker certificates by (default: the host of each address).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// Partitions per table and per exchange (default: one per worker thread).
    #[arg(long)]
    partitions: Option<usize>,
    /// Generate TPC-H at this scale factor and register its eight tables.
    #[arg(long, value_name = "SCALE")]
    tpch: Option<f64>,
    /// Run this SQL and exit (repeatable).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    commands: Vec<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Memory the workers this shell starts may use together (bytes, or with K, M, G, T),
    /// split equally between them: resident tables and running queries share it; tables spill
    /// their least recently used chunks to disk beyond it, and sorts and aggregations spill
    /// their state (default: three quarters of the machine's memory). Workers attached with
    /// `--workers` have their own (`dirk worker --memory-limit`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Where the workers this shell starts write spill files (default: `dirk-spill` under the
    /// system's temporary directory).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
}

/// `dirk worker`'s options.
#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The address to listen on, HOST:PORT (port 0 picks a free port; the worker prints it).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// CPU threads for tasks (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Refuse calls that do not carry this token (default: the DIRK_TOKEN environment variable).
    /// A worker needs one, unless `--insecure` on a loopback address.
    #[arg(long)]
    token: Option<String>,
    /// Accept calls without a token. Allowed only on a loopback address (127.0.0.1, ::1), where
    /// only this machine's users reach the worker.
    #[arg(long)]
    insecure: bool,
    /// TLS: this worker's certificate (PEM file).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: this worker's private key (PEM file).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: the certificate authority (PEM file) to verify other workers by.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Memory this worker may use (bytes, or with K, M, G, T): its resident chunks and its
    /// running queries share it; chunks spill to disk beyond it, least recently used first, and
    /// sorts and aggregations spill their state (default: three quarters of the machine's
    /// memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Where tasks write spill files (default: `dirk-spill` under the system's temporary
    /// directory).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Exit when standard input closes (`dirk cluster` and tests start workers this way, so
    /// workers never outlive the process that started them).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
    /// Failpoints to set, `NAME=ACTIONS;...` in the `fail` crate's syntax (tests fail the
    /// steps of a statement's commit on worker processes this way).
    #[arg(long, hide = true, value_name = "SPEC")]
    failpoints: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 512M or 8G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches(['B', 'I'])
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn main() {
    allocator::configure();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Worker(args)) => cluster::run_worker(args).map(|()| 0),
        Some(Command::Cluster {
            local,
            threads,
            shell,
        }) => cluster::LocalCluster::start(
            local,
            threads,
            shell.memory_limit.map(|m| m / local.max(1) as u64),
            shell.spill_dir.as_deref(),
        )
        .and_then(|cluster| run_shell(shell, Some(&cluster))),
        None => run_shell(cli.shell, None),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run_shell(cli: ShellArgs, local: Option<&cluster::LocalCluster>) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut builder = dirk_dtable::Session::builder();
    if let Some(n) = cli.local_workers {
        builder = builder.workers(n);
    }
    let token = dirk_dtable::flight::resolve_token(cli.token.clone())?;
    if let Some(cluster) = local {
        builder = builder.workers(cluster.addresses()).token(cluster.token());
    } else if !cli.workers.is_empty() {
        builder = builder.workers(cli.workers.clone());
        if let Some(t) = token {
            builder = builder.token(t);
        }
        if let Some(ca) = &cli.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            builder = builder.tls(pem, cli.tls_domain.clone());
        }
    }
    if let Some(n) = cli.partitions {
        builder = builder.partitions(n);
    }
    if local.is_none() && cli.workers.is_empty() {
        if let Some(m) = cli.memory_limit {
            builder = builder.memory(m as usize);
        }
        if let Some(dir) = &cli.spill_dir {
            builder = builder.spill_dir(dir);
        }
    }
    let session = builder.build()?;
    if let Some(cluster) = local {
        cluster.supervise(session.clone(), runtime.handle().clone());
        eprintln!("attached; a worker process that dies is replaced");
    }
    let mut shell = shell::Shell::new(session, runtime, cli.format);
    if let Some(sf) = cli.tpch {
        shell.load_tpch(sf)?;
    }
    let scripted = !cli.commands.is_empty() || cli.file.is_some();
    let mut ok = true;
    for c in &cli.commands {
        ok &= shell.run_text(c);
    }
    if let Some(f) = &cli.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        ok &= shell.run_text(&text);
    }
    if !scripted {
        if std::io::stdin().is_terminal() {
            shell.interactive()?;
        } else {
            let text = std::io::read_to_string(std::io::stdin())?;
            ok &= shell.run_text(&text);
        }
    }
    Ok(if ok { 0 } else { 1 })
}
