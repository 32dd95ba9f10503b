//! DataFusion's sqllogictest corpus and SQLite's `select1`–`select5`, run through Dirk with
//! more than one worker.
//!
//! - Every record is passed, failed or skipped; skips have reasons (Spark dialect, a data file
//!   the crate does not ship, DataFusion's `EXPLAIN` text, a condition that excludes
//!   DataFusion, or a record DataFusion itself fails here).
//! - Every Dirk failure must be listed in `slt/known-failures.txt` with its kind (error or
//!   wrong answer) and its message (ids and ports masked): a new failure, a listed one that
//!   fails another way, and a listed one that passes now each fail this test.
//!   `DIRK_SLT_BLESS=1` rewrites the list (keeping the notes) and `slt/REPORT.md`.
//! - SQLite: every query DataFusion answers on one node must be answered identically by Dirk.
//! - Dirk's own files (`slt/dirk/*.slt`: UPDATE, DELETE, MERGE, ALTER, TRUNCATE) have no
//!   reference engine: every record must pass.
//! - With `CI=true`, a SQLite directory or Dirk corpus that is not there fails the run instead
//!   of being left out.
//!
//! `DIRK_SLT_SQLITE_SAMPLE=k` runs every `k`-th query of SQLite's files (and every statement),
//! on both engines; the rest are skipped as sampled out. CI samples SQLite this way on worker
//! processes, after the whole of it in process.
//!
//! `DIRK_SLT=1` runs it; `DIRK_SLT_FILTER=substring` runs only matching files and
//! `DIRK_SLT_EXCLUDE=a,b` leaves out files whose `corpus/file` name contains one of these (the
//! list check then covers the files that ran, and `DIRK_SLT_BLESS` does nothing).
//!
//! `DIRK_SLT_CLUSTER=N` runs the same files on `N` real `dirk worker` processes on loopback
//! (started here, stopped at the end) instead of in-process workers; the same list of known
//! failures applies, and `DIRK_SLT_BLESS` writes the report to `REPORT-cluster.md`.
//!
//! `DIRK_SLT_FILE_TIMEOUT=seconds` changes the time each engine's run of one file may take
//! (default 600 s). The slowest file, SQLite's `select5` (joins of up to 64 tables), takes
//! 131 s for both engines in process and 182 s on three worker processes, in a debug build on
//! two cores (dependencies optimised, as the workspace's dev profile says).

use dirk_dtable::flight::{dirk_binary_of_this_build, LocalWorkers};
use dirk_dtable::Workers;
use dirk_slt::{run_file, Cluster, Dialect, Engine, Outcome, RecordResult};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In-process workers, unless `DIRK_SLT_CLUSTER` asks for worker processes.
const WORKERS: usize = 2;
const PARTITIONS: usize = 3;
/// CPU threads per worker process: the CI machines have two cores.
const THREADS_PER_PROCESS: usize = 2;
const DEFAULT_FILE_TIMEOUT: Duration = Duration::from_secs(600);
const PARALLEL_FILES: usize = 2;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        println!("slt: test");
        return ExitCode::SUCCESS;
    }
    // Left out of a plain `cargo test --workspace`, which it would make minutes longer (about
    // 150 s in process, 250 s on worker processes); `.ci/run` runs it both ways with DIRK_SLT=1.
    if std::env::var_os("DIRK_SLT").is_none() {
        println!("slt: skipped (set DIRK_SLT=1 to run the sqllogictest corpus)");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // DataFusion plans deep expressions recursively; debug builds need room.
        .thread_stack_size(64 << 20)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slt: {e}");
            ExitCode::FAILURE
        }
    }
}

struct FileRun {
    corpus: &'static str,
    relative: PathBuf,
    /// Whole-file skip reason.
    skipped: Option<String>,
    records: Vec<RecordResult>,
    /// The file could not be run at all (parse error, timeout).
    broken: Option<String>,
}

/// A file's name in reports, the exclude list and `known-failures.txt`: `corpus/relative`.
fn file_name(corpus: &str, relative: &Path) -> String {
    format!("{corpus}/{}", relative.display())
}

/// The crate's directory. Cargo sets it at run time too; that value wins, because a
/// binary reused from a build in another checkout would carry that checkout's path.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

async fn run() -> Result<(), String> {
    let started = Instant::now();
    let crate_dir = manifest_dir();
    let corpus = corpus_source()?;
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slt-corpus");
    let _ = std::fs::remove_dir_all(&work);
    for dir in ["test_files", "data"] {
        copy_dir(&corpus.join(dir), &work.join(dir)).map_err(|e| format!("copying {dir}: {e}"))?;
    }
    // The files name their data relative to the crate's directory, as DataFusion's runner does.
    std::env::set_current_dir(&work).map_err(|e| e.to_string())?;
    let filter = std::env::var("DIRK_SLT_FILTER").ok();
    // Started after the change of directory: the workers read the files' data by the same
    // relative paths as the driver.
    let processes = match std::env::var("DIRK_SLT_CLUSTER") {
        Ok(n) => {
            let n: usize = n
                .parse()
                .map_err(|_| format!("DIRK_SLT_CLUSTER={n}: not a number of workers"))?;
            Some(
                LocalWorkers::start(
                    &dirk_binary_of_this_build().map_err(|e| e.to_string())?,
                    n,
                    THREADS_PER_PROCESS,
                )
                .map_err(|e| e.to_string())?,
            )
        }
        Err(_) => None,
    };
    let (cluster, setup) = match &processes {
        Some(p) => (
            Cluster {
                workers: Workers::Remote(p.addresses()),
                token: Some(p.token().to_string()),
            },
            format!(
                "{} worker processes, {PARTITIONS} partitions",
                p.addresses().len()
            ),
        ),
        None => (
            Cluster {
                workers: Workers::InProcess(WORKERS),
                token: None,
            },
            format!("{WORKERS} in-process workers, {PARTITIONS} partitions"),
        ),
    };
    let engine = Engine::Dirk {
        cluster: Arc::new(cluster),
        partitions: PARTITIONS,
    };

    let mut jobs: Vec<(&'static str, PathBuf, PathBuf)> = Vec::new();
    let mut slt_files = Vec::new();
    list_files(Path::new("test_files"), &mut slt_files);
    slt_files.sort();
    for f in slt_files {
        let rel = f
            .strip_prefix("test_files")
            .expect("under test_files")
            .to_path_buf();
        jobs.push(("datafusion", work.join(&f), rel));
    }
    let strict = std::env::var("CI").is_ok_and(|v| v == "true");
    let sqlite_dir = crate_dir.join("../../shared/testdata/sqlite");
    if sqlite_dir.is_dir() {
        for i in 1..=5 {
            let name = format!("select{i}.test");
            jobs.push(("sqlite", sqlite_dir.join(&name), PathBuf::from(name)));
        }
    } else if strict {
        return Err(format!(
            "SQLite files not found at {} (CI=true: nothing may be left out)",
            sqlite_dir.display()
        ));
    } else {
        println!(
            "SQLite files not found at {}: not run",
            sqlite_dir.display()
        );
    }
    let dirk_dir = crate_dir.join("dirk");
    let mut dirk_files = Vec::new();
    list_files(&dirk_dir, &mut dirk_files);
    dirk_files.sort();
    if dirk_files.is_empty() && strict {
        return Err(format!("no Dirk .slt files at {}", dirk_dir.display()));
    }
    for f in dirk_files {
        let rel = f
            .strip_prefix(&dirk_dir)
            .expect("under dirk/")
            .to_path_buf();
        jobs.push(("dirk", f, rel));
    }
    if let Some(f) = &filter {
        jobs.retain(|(_, _, rel)| rel.to_string_lossy().contains(f.as_str()));
    }
    // `corpus/file` names not to run (CI leaves out the two SQLite files that take longest).
    let excluded: Vec<String> = std::env::var("DIRK_SLT_EXCLUDE")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    jobs.retain(|(corpus, _, rel)| {
        let name = file_name(corpus, rel);
        !excluded.iter().any(|e| name.contains(e.as_str()))
    });
    let everything = filter.is_none() && excluded.is_empty();

    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL_FILES));
    let mut handles = Vec::new();
    for (corpus, path, relative) in jobs {
        let gate = gate.clone();
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            run_one(corpus, path, relative, engine).await
        }));
    }
    let mut runs = Vec::new();
    for h in handles {
        runs.push(h.await.map_err(|e| format!("a file's run panicked: {e}"))?);
    }

    let report = report(&runs, &setup, started.elapsed());
    println!("{report}");
    let mut problems = Vec::new();
    check_sqlite(&runs, &mut problems).await;
    let report_file = if processes.is_some() {
        "REPORT-cluster.md"
    } else {
        "REPORT.md"
    };
    check_known_failures(
        &runs,
        &crate_dir,
        (report_file, &report),
        everything,
        processes.is_none(),
        &mut problems,
    )?;
    drop(processes);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        ))
    }
}

async fn run_one(corpus: &'static str, path: PathBuf, relative: PathBuf, dirk: Engine) -> FileRun {
    let mut run = FileRun {
        corpus,
        relative: relative.clone(),
        skipped: None,
        records: Vec::new(),
        broken: None,
    };
    if corpus == "datafusion" {
        if relative.starts_with("spark") {
            run.skipped = Some("Spark dialect".into());
            return run;
        }
        if let Some(missing) = missing_data_file(&path) {
            run.skipped = Some(format!("missing data file {missing}"));
            return run;
        }
    }
    let dialect = if corpus == "sqlite" {
        Dialect::Sqlite
    } else {
        Dialect::DataFusion
    };
    let file_started = Instant::now();
    match run_isolated(&path, &relative, dirk, dialect).await {
        Ok(records) => run.records = records,
        Err(e) => {
            run.broken = Some(e);
            return run;
        }
    }
    let failed: Vec<usize> = (0..run.records.len())
        .filter(|&i| is_failure(&run.records[i].outcome))
        .collect();
    // A Dirk failure is Dirk's only where DataFusion, in this same environment, passes. The
    // reference run is needed for every SQLite file (its check compares all answers). Dirk's
    // own files test what DataFusion does not run (in-place DML): they have no reference.
    if (!failed.is_empty() || corpus == "sqlite") && corpus != "dirk" {
        match run_isolated(&path, &relative, Engine::DataFusion, dialect).await {
            Ok(reference) => {
                let by_line: BTreeMap<String, RecordResult> =
                    reference.into_iter().map(|r| (r.at.clone(), r)).collect();
                for r in &mut run.records {
                    if !is_failure(&r.outcome) {
                        continue;
                    }
                    if let Some(reference) = by_line.get(&r.at) {
                        if is_failure(&reference.outcome) {
                            r.outcome = Outcome::Skip(format!(
                                "fails on DataFusion too here: {}",
                                short(message(&reference.outcome))
                            ));
                        }
                    }
                }
                if corpus == "sqlite" {
                    SQLITE_REFERENCE
                        .lock()
                        .expect("lock")
                        .insert(relative.clone(), by_line);
                }
            }
            Err(e) => run.broken = Some(format!("DataFusion reference run: {e}")),
        }
    }
    let secs = file_started.elapsed().as_secs_f64();
    if secs > 20.0 {
        eprintln!("slt: {} took {secs:.1} s", relative.display());
    }
    run
}

static SQLITE_REFERENCE: std::sync::Mutex<BTreeMap<PathBuf, BTreeMap<String, RecordResult>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Runs a file in its own task, with a fresh scratch directory and a time limit, so one file's
/// hang or panic is reported as that file's, not the suite's.
async fn run_isolated(
    path: &Path,
    relative: &Path,
    engine: Engine,
    dialect: Dialect,
) -> Result<Vec<RecordResult>, String> {
    datafusion_sqllogictest::setup_scratch_dir(relative).map_err(|e| e.to_string())?;
    let (path, relative) = (path.to_path_buf(), relative.to_path_buf());
    let mut task = tokio::spawn(async move { run_file(&path, &relative, engine, dialect).await });
    let limit = file_timeout();
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("panicked: {e}")),
        Err(_) => {
            // Stopped, not left running: it would take CPU from the files still to run.
            task.abort();
            Err(format!("did not finish in {} s", limit.as_secs()))
        }
    }
}

/// `DIRK_SLT_FILE_TIMEOUT` (seconds) where set, else the default.
fn file_timeout() -> Duration {
    match std::env::var("DIRK_SLT_FILE_TIMEOUT") {
        Err(_) => DEFAULT_FILE_TIMEOUT,
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                eprintln!(
                    "slt: DIRK_SLT_FILE_TIMEOUT={s}: not a number of seconds; using {} s",
                    DEFAULT_FILE_TIMEOUT.as_secs()
                );
                DEFAULT_FILE_TIMEOUT
            }
        },
    }
}

fn is_failure(o: &Outcome) -> bool {
    matches!(o, Outcome::Error(_) | Outcome::WrongAnswer(_))
}

fn message(o: &Outcome) -> &str {
    match o {
        Outcome::Error(m) | Outcome::WrongAnswer(m) | Outcome::Skip(m) => m,
        Outcome::Pass => "",
    }
}

fn short(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The first local path the file reads that the crate does not ship, if any.
fn missing_data_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    for (i, piece) in text.split('\'').enumerate() {
        if i % 2 == 0 || piece.contains("scratch") || piece.contains('\n') {
            continue;
        }
        let local = ["../", "data/", "test_files/"]
            .iter()
            .any(|p| piece.starts_with(p));
        if !local {
            continue;
        }
        let base = piece.split(['*', '?']).next().unwrap_or(piece);
        let base = base.rsplit_once('/').map_or(base, |(dir, _)| dir);
        let probe = if piece.contains(['*', '?']) {
            base
        } else {
            piece
        };
        if !Path::new(probe).exists() {
            return Some(piece.to_string());
        }
    }
    None
}

fn report(runs: &[FileRun], setup: &str, elapsed: Duration) -> String {
    let mut out = String::new();
    for corpus in ["datafusion", "sqlite", "dirk"] {
        let runs: Vec<_> = runs.iter().filter(|r| r.corpus == corpus).collect();
        if runs.is_empty() {
            continue;
        }
        let (mut f_pass, mut f_fail, mut f_skip) = (0, 0, 0);
        let (mut pass, mut error, mut wrong, mut skip) = (0, 0, 0, 0);
        let mut reasons: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in &runs {
            if let Some(reason) = &r.skipped {
                f_skip += 1;
                let key = reason_class(reason);
                reasons.entry(key).or_default().0 += 1;
                continue;
            }
            let failed = r.broken.is_some() || r.records.iter().any(|x| is_failure(&x.outcome));
            if failed {
                f_fail += 1;
            } else {
                f_pass += 1;
            }
            for rec in &r.records {
                match &rec.outcome {
                    Outcome::Pass => pass += 1,
                    Outcome::Error(_) => error += 1,
                    Outcome::WrongAnswer(_) => wrong += 1,
                    Outcome::Skip(reason) => {
                        skip += 1;
                        reasons.entry(reason_class(reason)).or_default().1 += 1;
                    }
                }
            }
        }
        out.push_str(&format!(
            "## {corpus} corpus ({setup})\n\n\
             files: {} run, {f_pass} pass, {f_fail} with failures, {f_skip} skipped\n\
             records: {pass} pass, {} fail ({error} errors, {wrong} wrong answers), {skip} skipped\n\n\
             | skip reason | files | records |\n|---|---|---|\n",
            f_pass + f_fail,
            error + wrong
        ));
        for (reason, (files, records)) in reasons {
            out.push_str(&format!("| {reason} | {files} | {records} |\n"));
        }
        out.push('\n');
    }
    out.push_str(&format!("(ran in {:.0} s)\n", elapsed.as_secs_f64()));
    out
}

/// Skip reasons grouped for the report (the missing file's name and DataFusion's message vary).
fn reason_class(reason: &str) -> String {
    for prefix in [
        "missing data file",
        "fails on DataFusion too",
        "sampled out",
        "onlyif",
        "skipif",
    ] {
        if reason.starts_with(prefix) {
            return prefix.to_string();
        }
    }
    reason.to_string()
}

/// Every SQLite query DataFusion answers must be answered identically by Dirk.
async fn check_sqlite(runs: &[FileRun], problems: &mut Vec<String>) {
    let reference = SQLITE_REFERENCE.lock().expect("lock");
    // (statements, queries) DataFusion passes, and of those, the ones Dirk passes.
    let (mut answered, mut dirk_same) = ([0usize; 2], [0usize; 2]);
    for r in runs.iter().filter(|r| r.corpus == "sqlite") {
        if let Some(b) = &r.broken {
            problems.push(format!("sqlite/{}: {b}", r.relative.display()));
            continue;
        }
        let Some(df) = reference.get(&r.relative) else {
            continue;
        };
        let dirk: BTreeMap<&String, &Outcome> =
            r.records.iter().map(|x| (&x.at, &x.outcome)).collect();
        for (line, record) in df {
            if record.outcome != Outcome::Pass {
                continue;
            }
            let kind = usize::from(record.query);
            answered[kind] += 1;
            match dirk.get(line) {
                Some(Outcome::Pass) => dirk_same[kind] += 1,
                other => problems.push(format!(
                    "sqlite/{}:{line}: DataFusion answers, Dirk: {other:?}",
                    r.relative.display()
                )),
            }
        }
    }
    if answered != [0, 0] {
        println!(
            "SQLite: DataFusion answers {} queries (and runs {} statements); Dirk answers {} of \
             those queries the same (and runs {} of those statements)",
            answered[1], answered[0], dirk_same[1], dirk_same[0]
        );
    }
}

const KNOWN: &str = "known-failures.txt";

/// A failure as the list records it: its kind and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    kind: String,
    message: String,
}

/// A failure's message as the list compares it: one line, cut short, with the ids and ports
/// that differ from run to run masked (`task 284` -> `task #`, `127.0.0.1:7001` ->
/// `127.0.0.1:#`, `__dirk_temp_rows_12` -> `__dirk_temp_rows_#`, the corpus's directory ->
/// `<corpus>`).
fn listed_message(message: &str) -> String {
    const MASKED_AFTER: [&str; 5] = ["task ", "chunk ", "worker ", "127.0.0.1:", "_temp_"];
    // The corpus is copied under the build directory, wherever that is.
    let message = match std::env::current_dir() {
        Ok(dir) => message.replace(&dir.display().to_string(), "<corpus>"),
        Err(_) => message.to_string(),
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while !rest.is_empty() {
        let next = MASKED_AFTER
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .min();
        let Some((i, len)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..i + len]);
        rest = &rest[i + len..];
        // `_temp_` is followed by the temporary table's purpose, then its number.
        let word = rest
            .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
            .unwrap_or(rest.len());
        let word = if len == "_temp_".len() { word } else { 0 };
        out.push_str(&rest[..word]);
        rest = &rest[word..];
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits > 0 {
            out.push('#');
            rest = &rest[digits..];
        }
    }
    short(&out).replace('\t', " ")
}

/// Checks the failures against the list. `report` is written to its file when blessing; the list
/// itself is rewritten only from an in-process run (`write_list`), the one CI keeps complete.
fn check_known_failures(
    runs: &[FileRun],
    crate_dir: &Path,
    report: (&str, &str),
    everything: bool,
    write_list: bool,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let list_path = crate_dir.join(KNOWN);
    let text = std::fs::read_to_string(&list_path).unwrap_or_default();
    // key -> (failure, note)
    let mut listed: BTreeMap<String, (Failure, String)> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut parts = line.splitn(4, '\t');
        let key = parts.next().unwrap_or("").to_string();
        let kind = parts.next().unwrap_or("").to_string();
        let message = parts.next().unwrap_or("").to_string();
        let note = parts.next().unwrap_or("").to_string();
        listed.insert(key, (Failure { kind, message }, note));
    }
    let mut found: BTreeMap<String, Failure> = BTreeMap::new();
    // Records this run did not try (sampled out): neither passed nor failed.
    let mut untried: BTreeSet<String> = BTreeSet::new();
    for r in runs {
        let file = file_name(r.corpus, &r.relative);
        if let Some(b) = &r.broken {
            found.insert(
                file.clone(),
                Failure {
                    kind: "broken".into(),
                    message: listed_message(b),
                },
            );
        }
        for rec in &r.records {
            let kind = match &rec.outcome {
                Outcome::Error(_) => "error",
                Outcome::WrongAnswer(_) => "wrong",
                Outcome::Skip(reason) if reason.starts_with("sampled out") => {
                    untried.insert(format!("{file}:{}", rec.at));
                    continue;
                }
                _ => continue,
            };
            found.insert(
                format!("{file}:{}", rec.at),
                Failure {
                    kind: kind.to_string(),
                    message: listed_message(message(&rec.outcome)),
                },
            );
        }
    }
    // Only the files that ran are checked against the list (a run may leave some out).
    let ran: BTreeSet<String> = runs
        .iter()
        .map(|r| file_name(r.corpus, &r.relative))
        .collect();
    // A key is `corpus/file[:included-file...]:line`; the file that ran is the part before the
    // first colon (an included `.slt.part` adds a colon of its own).
    let file_of = |key: &str| key.split_once(':').map_or(key, |(f, _)| f).to_string();
    if !everything {
        listed.retain(|key, _| ran.contains(&file_of(key)));
    }
    listed.retain(|key, _| !untried.contains(key));
    if std::env::var("DIRK_SLT_BLESS").is_ok() && everything {
        let (report_file, report) = report;
        std::fs::write(
            crate_dir.join(report_file),
            format!("# sqllogictest report\n\n{report}"),
        )
        .map_err(|e| e.to_string())?;
        if !write_list {
            println!("wrote {report_file}; the list is rewritten only by an in-process run");
            return Ok(());
        }
        let mut out = String::from(
            "# Dirk's failures on DataFusion's sqllogictest corpus and SQLite's select1-5, one per\n\
             # line, tab-separated: file:line, kind (error: Dirk errs where DataFusion answers;\n\
             # wrong: Dirk answers differently), the failure's message (ids and ports masked), and\n\
             # for a wrong answer, why. A record that fails with another kind or message, or\n\
             # passes, fails the run. DIRK_SLT_BLESS=1 rewrites it, keeping the notes.\n",
        );
        for (key, failure) in &found {
            let note = listed
                .get(key)
                .filter(|(f, n)| f.kind == failure.kind && !n.is_empty())
                .map(|(_, n)| n.as_str())
                .unwrap_or("");
            let line = format!("{key}\t{}\t{}\t{note}", failure.kind, failure.message);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        std::fs::write(&list_path, out).map_err(|e| e.to_string())?;
        println!("wrote {} ({} failures)", list_path.display(), found.len());
        return Ok(());
    }
    for (key, failure) in &found {
        match listed.get(key) {
            None => problems.push(format!(
                "new failure {key} ({}): {}",
                failure.kind, failure.message
            )),
            Some((known, _)) if known != failure => problems.push(format!(
                "{key} fails differently than listed: listed {}: {}; now {}: {}",
                known.kind, known.message, failure.kind, failure.message
            )),
            Some(_) => {}
        }
    }
    for key in listed.keys().filter(|k| !found.contains_key(*k)) {
        problems.push(format!(
            "{key} is listed in {KNOWN} but passes now: remove it (DIRK_SLT_BLESS=1)"
        ));
    }
    Ok(())
}

/// The `datafusion-sqllogictest` crate's directory, from `cargo metadata`.
fn corpus_source() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = manifest_dir().join("Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let manifest = packages
        .iter()
        .find(|p| p["name"] == "datafusion-sqllogictest")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("datafusion-sqllogictest is not a dependency")?;
    Ok(Path::new(manifest)
        .parent()
        .expect("manifest in a directory")
        .to_path_buf())
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "scratch") {
                list_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}
