//! `dirk`: the SQL shell on an embedded Dirk session (in-process workers).
//!
//! ```text
//! dirk --tpch 0.1                      # shell with TPC-H SF 0.1 loaded
//! dirk -c "SELECT 1" -c "SELECT 2"     # run statements and exit
//! dirk -f script.sql --format csv      # run a file
//! echo "SELECT 1;" | dirk              # non-interactive when stdin is not a terminal
//! ```

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
    about = "Dirk: a distributed dataframe engine with a SQL front end"
)]
struct Cli {
    /// In-process workers (default: one per core).
    #[arg(long)]
    local_workers: Option<usize>,
    /// Partitions per table and per exchange (default: one per worker).
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
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut builder = dirk_dtable::Session::builder();
    if let Some(n) = cli.local_workers {
        builder = builder.workers(n);
    }
    if let Some(n) = cli.partitions {
        builder = builder.partitions(n);
    }
    let session = builder.build()?;
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
