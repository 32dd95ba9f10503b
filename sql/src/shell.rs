//! The shell: runs statements and backslash commands, prints results in the chosen format.

use crate::statements::{split, Piece};
use crate::Format;
use arrow::array::RecordBatch;
use dirk_dtable::{RecordBatchStream, Session};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "RIGHT JOIN",
    "FULL JOIN",
    "INNER JOIN",
    "ON",
    "USING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "EXISTS",
    "BETWEEN",
    "LIKE",
    "IS NULL",
    "IS NOT NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DISTINCT",
    "UNION",
    "UNION ALL",
    "WITH",
    "OVER",
    "PARTITION BY",
    "INSERT INTO",
    "VALUES",
    "CREATE TABLE",
    "DROP TABLE",
    "EXPLAIN",
    "SHOW TABLES",
    "DESCRIBE",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "CAST",
    "DESC",
    "ASC",
];

const HELP: &str = "\
\\q              quit
\\dt             list tables
\\d TABLE        describe a table
\\memory         each worker's memory budget, and where each table's chunks are
\\timing         toggle timing of statements
\\mode MODE      output as table, csv or json
\\tpch SCALE     generate TPC-H at SCALE and register its tables
\\worker ADDR    add the `dirk worker` at ADDR (host:port) to the cluster
\\?              this help
Statements end with `;`.";

/// Rows per printed table: a larger result prints as several tables, one after another, each
/// as its rows arrive.
const TABLE_PAGE_ROWS: usize = 10_000;

pub(crate) struct Shell {
    session: Session,
    runtime: tokio::runtime::Runtime,
    format: Format,
    timing: bool,
    words: Arc<Mutex<Vec<String>>>,
}

impl Shell {
    pub(crate) fn new(session: Session, runtime: tokio::runtime::Runtime, format: Format) -> Self {
        let shell = Shell {
            session,
            runtime,
            format,
            timing: false,
            words: Arc::new(Mutex::new(Vec::new())),
        };
        shell.refresh_words();
        shell
    }

    pub(crate) fn load_tpch(&mut self, scale: f64) -> anyhow::Result<()> {
        let start = Instant::now();
        let loaded = self.runtime.block_on(self.session.load_tpch(scale))?;
        let rows: u64 = loaded.iter().map(|(_, t)| t.num_rows()).sum();
        eprintln!(
            "TPC-H SF {scale}: {} tables, {rows} rows, {} partitions each, on {} workers ({:.1} s)",
            loaded.len(),
            self.session.partitions(),
            self.session.engine().workers().len(),
            start.elapsed().as_secs_f64()
        );
        self.refresh_words();
        Ok(())
    }

    /// Runs every statement and command in `text`; true when all succeeded.
    pub(crate) fn run_text(&mut self, text: &str) -> bool {
        let (mut pieces, rest) = split(text);
        if !rest.trim().is_empty() {
            pieces.push(Piece::Sql(rest.trim().to_string()));
        }
        let mut ok = true;
        for p in pieces {
            ok &= self.run_piece(p);
        }
        ok
    }

    fn run_piece(&mut self, piece: Piece) -> bool {
        let ok = match piece {
            Piece::Sql(sql) => self.run_sql(&sql),
            Piece::Command(c) => self.run_command(&c),
        };
        // A worker lost, and what it held rebuilt: one line each.
        for notice in self.session.engine().take_notices() {
            eprintln!("note: {notice}");
        }
        ok
    }

    fn run_sql(&mut self, sql: &str) -> bool {
        let start = Instant::now();
        let result = crate::progress::with_progress(self.session.engine(), || {
            self.runtime.block_on(async {
                let stream = self.session.sql(sql).await?.execute_stream().await?;
                self.print(stream).await
            })
        });
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        };
        if self.timing {
            eprintln!("Time: {:.3} ms", start.elapsed().as_secs_f64() * 1000.0);
        }
        self.refresh_words();
        ok
    }

    fn run_command(&mut self, line: &str) -> bool {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg = parts.next();
        match (cmd, arg) {
            ("q" | "quit", _) => std::process::exit(0),
            ("?" | "h" | "help", _) => {
                println!("{HELP}");
                true
            }
            ("timing", _) => {
                self.timing = !self.timing;
                eprintln!("Timing is {}.", if self.timing { "on" } else { "off" });
                true
            }
            ("dt", _) => self.run_sql("SHOW TABLES"),
            ("d", None) => self.run_sql("SHOW TABLES"),
            ("d", Some(t)) => {
                if !self.session.table_names().iter().any(|n| n == t) {
                    eprintln!("error: table `{t}` not found");
                    return false;
                }
                self.run_sql(&format!("DESCRIBE {t}"))
            }
            ("memory", _) => {
                self.print_memory();
                true
            }
            ("mode", Some(m)) => {
                self.format = match m {
                    "table" => Format::Table,
                    "csv" => Format::Csv,
                    "json" => Format::Json,
                    other => {
                        eprintln!("error: unknown mode `{other}` (table, csv or json)");
                        return false;
                    }
                };
                true
            }
            ("worker", Some(address)) => {
                match self.runtime.block_on(self.session.add_worker(address)) {
                    Ok(id) => {
                        eprintln!("{id} joined ({address})");
                        true
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        false
                    }
                }
            }
            ("tpch", Some(sf)) => match sf.parse::<f64>() {
                Ok(sf) => match self.load_tpch(sf) {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("error: {e}");
                        false
                    }
                },
                Err(_) => {
                    eprintln!("error: `{sf}` is not a scale factor");
                    false
                }
            },
            _ => {
                eprintln!("error: unknown command `\\{line}` (\\? for help)");
                false
            }
        }
    }

    /// Prints a result as it arrives: CSV and JSON batch by batch, a table once whole (its
    /// column widths depend on every row).
    async fn print(&self, mut stream: RecordBatchStream) -> dirk_dtable::Result<()> {
        use futures::TryStreamExt as _;
        if stream.schema().fields().is_empty() {
            // A statement: nothing to show but that it ran.
            while stream.try_next().await?.is_some() {}
            if self.format == Format::Table {
                println!("OK");
            }
            return Ok(());
        }
        let cannot_print = |e: arrow::error::ArrowError| dirk_dtable::DirkError::from(e);
        let stdout = std::io::stdout();
        match self.format {
            Format::Table => {
                // Printed a page at a time, so a result larger than memory still prints.
                let mut page: Vec<RecordBatch> = Vec::new();
                let (mut in_page, mut rows, mut pages) = (0usize, 0usize, 0usize);
                let print_page = |page: &[RecordBatch]| -> dirk_dtable::Result<()> {
                    let table =
                        arrow::util::pretty::pretty_format_batches(page).map_err(cannot_print)?;
                    println!("{table}");
                    Ok(())
                };
                while let Some(batch) = stream.try_next().await? {
                    in_page += batch.num_rows();
                    rows += batch.num_rows();
                    page.push(batch);
                    if in_page >= TABLE_PAGE_ROWS {
                        print_page(&page)?;
                        page.clear();
                        (in_page, pages) = (0, pages + 1);
                    }
                }
                if in_page > 0 || pages == 0 {
                    print_page(&page)?;
                }
                println!("({rows} row{})", if rows == 1 { "" } else { "s" });
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(stdout.lock());
                let mut any = false;
                while let Some(batch) = stream.try_next().await? {
                    w.write(&batch).map_err(cannot_print)?;
                    any = true;
                }
                if !any {
                    // The header alone, for a result of no rows.
                    w.write(&RecordBatch::new_empty(stream.schema()))
                        .map_err(cannot_print)?;
                }
            }
            Format::Json => {
                let mut w = arrow::json::ArrayWriter::new(stdout.lock());
                while let Some(batch) = stream.try_next().await? {
                    w.write(&batch).map_err(cannot_print)?;
                }
                w.finish().map_err(cannot_print)?;
                drop(w);
                println!();
            }
        }
        Ok(())
    }

    /// Each worker's budget and use, then each resident table's chunks per worker: in memory
    /// or spilled to disk.
    fn print_memory(&self) {
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
        for w in self.session.engine().worker_status() {
            let m = &w.memory;
            println!(
                "{}: {} used of {}; {} on disk; {} spilled and {} read back since start",
                w.id,
                mb(m.used),
                m.limit.map_or("no limit".to_string(), mb),
                mb(m.disk_bytes),
                mb(m.spilled_total),
                mb(m.reloaded_total),
            );
        }
        let rows = self.session.table_storage();
        if rows.is_empty() {
            return;
        }
        let mut t = vec![vec![
            "table".to_string(),
            "worker".into(),
            "chunks".into(),
            "rows".into(),
            "in memory".into(),
            "spilled".into(),
            "on disk".into(),
        ]];
        for r in rows {
            t.push(vec![
                r.table,
                r.worker.to_string(),
                r.chunks.to_string(),
                r.rows.to_string(),
                mb(r.memory_bytes),
                r.spilled_chunks.to_string(),
                mb(r.disk_bytes),
            ]);
        }
        let widths: Vec<usize> = (0..t[0].len())
            .map(|c| t.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        for (i, r) in t.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (v, w))| {
                    if c < 2 {
                        format!("{v:<w$}")
                    } else {
                        format!("{v:>w$}")
                    }
                })
                .collect();
            println!("{}", cells.join("  "));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                println!("{}", rule.join("  "));
            }
        }
    }

    /// Table and column names for tab completion.
    fn refresh_words(&self) {
        let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
        for name in self.session.table_names() {
            if let Ok(t) = self.session.table(&name) {
                words.extend(t.schema().fields().iter().map(|f| f.name().clone()));
            }
            words.push(name);
        }
        words.sort();
        words.dedup();
        if let Ok(mut w) = self.words.lock() {
            *w = words;
        }
    }

    pub(crate) fn interactive(&mut self) -> anyhow::Result<()> {
        let mut editor: Editor<ShellHelper, DefaultHistory> = Editor::new()?;
        editor.set_helper(Some(ShellHelper {
            words: self.words.clone(),
        }));
        let history =
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".dirk_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!(
            "Dirk {} — {} workers. \\? for help, \\q to quit.",
            env!("CARGO_PKG_VERSION"),
            self.session.engine().workers().len()
        );
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.trim().is_empty() {
                "dirk> "
            } else {
                "   -> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    buffer.push_str(&line);
                    buffer.push('\n');
                    let (pieces, rest) = split(&buffer);
                    if !pieces.is_empty() {
                        let entry = buffer[..buffer.len() - rest.len()].trim().to_string();
                        if !names_a_credential(&entry) {
                            let _ = editor.add_history_entry(entry);
                        }
                    }
                    buffer = rest;
                    for p in pieces {
                        self.run_piece(p);
                    }
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }
}

struct ShellHelper {
    words: Arc<Mutex<Vec<String>>>,
}

impl Completer for ShellHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let lower = prefix.to_lowercase();
        let words = self.words.lock().map(|w| w.clone()).unwrap_or_default();
        let matches = words
            .into_iter()
            .filter(|w| w.to_lowercase().starts_with(&lower))
            .map(|w| {
                // Keywords follow the case the user typed.
                if w.chars().all(|c| c.is_uppercase() || c == ' ')
                    && prefix.chars().all(|c| c.is_lowercase())
                {
                    w.to_lowercase()
                } else {
                    w
                }
            })
            .collect();
        Ok((start, matches))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

/// Whether a statement gives a store credential in its `OPTIONS` (`'aws.secret_access_key'`,
/// ...): such a statement is not written to the history file, where the secret would stay.
fn names_a_credential(statement: &str) -> bool {
    const WORDS: [&str; 6] = [
        "secret",
        "access_key",
        "session_token",
        "service_account_key",
        "sas_key",
        "bearer_token",
    ];
    let lower = statement.to_lowercase();
    WORDS.iter().any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests {
    use super::names_a_credential;

    #[test]
    fn statements_with_credentials_stay_out_of_the_history() {
        assert!(names_a_credential(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/' \
             OPTIONS ('aws.secret_access_key' 'x')"
        ));
        assert!(names_a_credential("... OPTIONS ('AWS.SESSION_TOKEN' 'x')"));
        assert!(!names_a_credential(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/' \
             OPTIONS ('aws.region' 'us-east-1')"
        ));
        assert!(!names_a_credential("SELECT count(*) FROM lineitem"));
    }
}
