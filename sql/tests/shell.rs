//! The `dirk` binary, driven as a user would: `-c`, `-f`, stdin, formats, errors, TPC-H.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn dirk(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dirk"))
        .args(["--local-workers", "2"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dirk");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn commands_run_in_order_and_print_tables() {
    let out = dirk(
        &[
            "-c",
            "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a'), (2, 'b')) v(x, y)",
            "-c",
            "SELECT sum(x) AS s FROM t",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("| s |") && stdout.contains("| 3 |"),
        "{stdout}"
    );
    assert!(stdout.contains("(1 row)"), "{stdout}");
}

#[test]
fn csv_and_json_formats() {
    let sql = "SELECT x, y FROM (VALUES (1, 'a'), (2, 'b')) v(x, y) ORDER BY x";
    let out = dirk(&["--format", "csv", "-c", sql], None);
    assert_eq!(text(&out.stdout).trim(), "x,y\n1,a\n2,b");
    let out = dirk(&["--format", "json", "-c", sql], None);
    assert_eq!(
        text(&out.stdout).trim(),
        r#"[{"x":1,"y":"a"},{"x":2,"y":"b"}]"#
    );
}

#[test]
fn files_and_stdin_with_multiline_statements_and_commands() {
    let dir = std::env::temp_dir().join(format!("dirk-shell-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script.sql");
    std::fs::write(&file, "CREATE TABLE n AS\n  SELECT 40 AS v;\n-- a comment; with a semicolon\nSELECT v + 2\n  AS answer FROM n;\n").unwrap();
    let out = dirk(&["--format", "csv", "-f", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "answer\n42");
    std::fs::remove_dir_all(&dir).unwrap();

    let out = dirk(
        &["--format", "csv"],
        Some("SELECT 'x;y' AS s;\n\\mode json\nSELECT 1 AS one;\n\\dt\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("s\nx;y\n"), "{stdout}");
    assert!(stdout.contains(r#"[{"one":1}]"#), "{stdout}");
}

#[test]
fn errors_are_one_line_and_set_the_exit_code() {
    let out = dirk(&["-c", "SELEC 1", "-c", "SELECT 2 AS two"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        line.contains("SELEC") && line.contains("Line: 1, Column: 1"),
        "{line}"
    );
    assert!(
        text(&out.stdout).contains("| 2   |"),
        "later statements still run"
    );
    let out = dirk(&["-c", "\\nonsense"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown command"));
    let out = dirk(&["-f", "/no/such/file.sql"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /no/such/file.sql"));
}

/// DataFusion 55's planner panics on a scalar subquery with no columns as an UPDATE's value
/// (found by the SQL fuzz): the user sees one error line, no panic report, and the session goes on.
#[test]
fn a_panic_in_the_planner_is_one_error_line_and_the_session_goes_on() {
    let out = dirk(
        &[],
        Some(
            "CREATE TABLE t AS SELECT 1 AS k;\n\
             UPDATE t SET k = (SELECT FROM t);\n\
             SELECT k + 1 AS next FROM t;\n",
        ),
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "a panic report: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].starts_with("error: internal error while planning"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("| 2    |"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn tpch_tables_are_loaded_and_queryable() {
    let out = dirk(
        &[
            "--tpch",
            "0.01",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM nation",
            "-c",
            "SELECT count(*) AS n FROM lineitem",
            "-c",
            "\\dt",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("n\n25\nn\n60175\n"), "{stdout}");
    for t in [
        "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
    ] {
        assert!(
            stdout.contains(&format!(",{t},BASE TABLE")),
            "{t} missing: {stdout}"
        );
    }
    assert!(text(&out.stderr).contains("TPC-H SF 0.01: 8 tables"));
}

#[test]
fn tables_change_in_place_from_the_shell() {
    let script = "CREATE TABLE t (id BIGINT, x BIGINT);\n\
                  INSERT INTO t VALUES (1, 10), (2, 20), (3, 30);\n\
                  UPDATE t SET x = x + 1 WHERE id >= 2;\n\
                  DELETE FROM t WHERE id = 1;\n\
                  ALTER TABLE t ADD COLUMN y BIGINT DEFAULT 5;\n\
                  ALTER TABLE t RENAME COLUMN x TO ex;\n\
                  SELECT id, ex, y FROM t ORDER BY id;\n\
                  TRUNCATE t;\n\
                  SELECT count(*) AS n FROM t;\n";
    let out = dirk(&["--format", "csv"], Some(script));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // Rows changed: 3 inserted, 2 updated, 1 deleted, 2 given a column, 0 renamed.
    for expected in ["count\n3\n", "count\n2\n", "count\n1\n", "count\n0\n"] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
    assert!(stdout.contains("id,ex,y\n2,21,5\n3,31,5\n"), "{stdout}");
    assert!(stdout.ends_with("n\n0\n"), "{stdout}");
}

#[test]
fn merge_and_update_from_in_the_shell() {
    let script = "CREATE TABLE stock (item VARCHAR, qty BIGINT);\n\
                  INSERT INTO stock VALUES ('apple', 5), ('pear', 2), ('plum', 9);\n\
                  CREATE TABLE deliveries (item VARCHAR, qty BIGINT);\n\
                  INSERT INTO deliveries VALUES ('apple', 3), ('pear', 0), ('fig', 4), ('kiwi', 1);\n\
                  MERGE INTO stock AS t USING deliveries AS d ON t.item = d.item\n\
                    WHEN MATCHED AND d.qty = 0 THEN DELETE\n\
                    WHEN MATCHED THEN UPDATE SET qty = t.qty + d.qty\n\
                    WHEN NOT MATCHED THEN INSERT VALUES (d.item, d.qty);\n\
                  UPDATE stock SET qty = stock.qty * 10 FROM deliveries d \
                    WHERE stock.item = d.item AND d.qty > 3;\n\
                  SELECT item, qty FROM stock ORDER BY item;\n";
    let out = dirk(&["--format", "csv"], Some(script));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let counts: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[0] == "count")
        .map(|w| w[1])
        .collect();
    // Inserts of 3 and 4 rows; MERGE: apple updated, pear deleted, fig and kiwi inserted;
    // UPDATE ... FROM: fig.
    assert_eq!(counts, ["3", "4", "4", "1"], "{stdout}");
    assert!(
        stdout.ends_with("item,qty\napple,8\nfig,40\nkiwi,1\nplum,9\n"),
        "{stdout}"
    );
}

#[test]
fn a_worker_needs_a_token_unless_insecure_on_loopback() {
    let worker = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dirk"));
        c.arg("worker").args(args).stdin(Stdio::null());
        match token {
            Some(t) => c.env("DIRK_TOKEN", t),
            None => c.env_remove("DIRK_TOKEN"),
        };
        c.output().unwrap()
    };
    for (args, token, expected) in [
        (&["--listen", "127.0.0.1:0"][..], None, "needs a token"),
        (
            &["--listen", "0.0.0.0:0", "--insecure"][..],
            None,
            "loopback address only",
        ),
        (&["--listen", "127.0.0.1:0"][..], Some(""), "token is empty"),
    ] {
        let out = worker(args, token);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // On loopback with --insecure it starts (and, told to, exits when its standard input ends).
    let out = worker(
        &["--listen", "127.0.0.1:0", "--insecure", "--exit-with-stdin"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("dirk worker listening on 127.0.0.1:"),
        "{}",
        text(&out.stdout)
    );
}

/// `\worker ADDR` adds a worker process to a shell on a cluster; an embedded shell says it has
/// none to add to.
#[test]
fn a_worker_joins_a_running_shell() {
    use std::io::{BufRead, BufReader};
    let token = "shell-join-token";
    let start_worker = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dirk"))
            .args(["worker", "--listen", "127.0.0.1:0", "--exit-with-stdin"])
            .env("DIRK_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "dirk worker listening on HOST:PORT (protocol N)"
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        assert!(address.starts_with("127.0.0.1:"), "{line}");
        (child, address)
    };
    let (first, a) = start_worker();
    let (second, b) = start_worker();
    let out = Command::new(env!("CARGO_BIN_EXE_dirk"))
        .args(["--workers", &a, "--format", "csv"])
        .env("DIRK_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut shell| {
            shell.stdin.take().unwrap().write_all(
                format!(
                    "\\worker {b}\nCREATE TABLE t AS SELECT value AS v FROM \
                     generate_series(1, 1000);\nSELECT sum(v) AS s FROM t;\n"
                )
                .as_bytes(),
            )?;
            shell.wait_with_output()
        })
        .unwrap();
    for mut w in [first, second] {
        drop(w.stdin.take());
        let _ = w.wait();
    }
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("worker 1 joined ({b})")),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("s\n500500"),
        "{}",
        text(&out.stdout)
    );

    let out = dirk(&[], Some("\\worker 127.0.0.1:1\n"));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("embedded session"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

/// `dirk cluster --local 2` replaces a worker process that dies: the dead one is declared lost
/// at once, a new process joins in its place, the partitions it held are rebuilt (a line says
/// so), and the statements after it run over every row.
#[cfg(target_os = "linux")]
#[test]
fn a_local_cluster_replaces_a_worker_process_that_dies() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;
    let mut shell = Command::new(env!("CARGO_BIN_EXE_dirk"))
        .args(["cluster", "--local", "2", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines_of = |pipe: Box<dyn std::io::Read + Send>| {
        let (lines, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        rx
    };
    let stderr = lines_of(Box::new(shell.stderr.take().unwrap()));
    let stdout = lines_of(Box::new(shell.stdout.take().unwrap()));
    let wait_for = |rx: &mpsc::Receiver<String>, what: &str| -> String {
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line with {what:?}: {e}"),
            }
        }
    };
    wait_for(&stderr, "started 2 local workers");
    // The session is attached to both; the script makes a table with partitions on both and
    // runs a join of a few seconds, during which one worker dies.
    wait_for(&stderr, "attached");
    let mut stdin = shell.stdin.take().unwrap();
    stdin
        .write_all(
            b"CREATE TABLE t AS SELECT value AS v FROM generate_series(1, 1000);\n\
              CREATE TABLE u AS SELECT value AS v FROM generate_series(1, 100000);\n\
              SELECT sum(a.v % 7 * (b.v % 5)) AS j FROM u a JOIN u b ON a.v % 10 = b.v % 10;\n\
              SELECT sum(v) AS s FROM t;\n",
        )
        .unwrap();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(1500));
    let workers = children_of(shell.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    Command::new("kill")
        .args(["-9", &workers[0].to_string()])
        .status()
        .unwrap();
    let joined = wait_for(&stderr, "joined as worker 2");
    assert!(joined.contains("exited"), "{joined}");
    let status = shell.wait().unwrap();
    let errors: Vec<String> = stderr.iter().collect();
    assert!(status.success(), "{errors:?}");
    let out: Vec<String> = stdout.iter().collect();
    assert_eq!(out[out.len() - 2..], ["s", "500500"], "{out:?}");
    let lost = errors.iter().find(|l| l.starts_with("note: worker 0 lost"));
    assert!(lost.is_some(), "{errors:?}");
    let rebuilt = errors
        .iter()
        .find(|l| l.starts_with("note: the chunks lost with worker 0 rebuilt"));
    assert!(rebuilt.is_some(), "{errors:?}");
}

/// The processes whose parent is `pid`.
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Vec<u32> {
    let mut children: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces; what follows its ')' is fixed.
            let after = stat.get(stat.rfind(')')? + 2..)?;
            let ppid: u32 = after.split(' ').nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect();
    children.sort_unstable();
    children
}

/// A CSV directory as a new user queries it: an external table, described by `\d`, read in place
/// by each query, appended to by `INSERT`, and named directly in `FROM`.
#[test]
fn an_external_table_is_described_queried_and_appended_to() {
    let dir = std::env::temp_dir().join(format!("dirk-shell-ext-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.csv"),
        "city,fare\nOslo,10\nBergen,20\nOslo,30\n",
    )
    .unwrap();
    let d = dir.display();
    let script = format!(
        "CREATE EXTERNAL TABLE trips STORED AS CSV LOCATION '{d}/' \
         OPTIONS ('format.has_header' 'true');\n\
         \\d trips\n\
         INSERT INTO trips VALUES ('Bergen', 40);\n\
         SELECT city, sum(fare) AS total FROM trips GROUP BY city ORDER BY city;\n\
         SELECT count(*) AS files_rows FROM '{d}/a.csv';\n\
         UPDATE trips SET fare = 0;\n"
    );
    let out = dirk(&["--format", "csv"], Some(&script));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stdout.contains("city,Utf8"),
        "\\d lists the columns: {stdout}"
    );
    assert!(stdout.contains("Bergen,60\nOslo,40"), "{stdout}");
    assert!(stdout.contains("files_rows\n3"), "{stdout}");
    assert!(
        stderr.contains("is an external table") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2, "the INSERT wrote one new file beside a.csv");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a budget below a table's size, the table's chunks spill and `\memory` shows where they
/// are; a result of more rows than a printed page prints as several tables, every row once.
#[test]
fn a_small_budget_spills_and_memory_shows_where_each_table_is() {
    let spill = std::env::temp_dir().join(format!("dirk-shell-spill-{}", std::process::id()));
    let out = dirk(
        &[
            "--memory-limit",
            "8M",
            "--spill-dir",
            spill.to_str().unwrap(),
            "--partitions",
            "8",
            "-c",
            "CREATE TABLE big AS SELECT value AS v, repeat('x', 40) AS pad \
             FROM generate_series(1, 200000)",
            "-c",
            "\\memory",
            "-c",
            "SELECT v FROM big WHERE v <= 25000",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("used of 4.2 MB"), "{stdout}");
    let big: Vec<&str> = stdout.lines().filter(|l| l.starts_with("big ")).collect();
    assert!(
        !big.is_empty(),
        "a line per worker holding part of it: {stdout}"
    );
    let spilled: usize = big
        .iter()
        .map(|l| {
            l.split_whitespace()
                .nth(7)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(spilled > 0, "{stdout}");
    // 25,000 rows: pages of at least 10,000 rows, one header each, every value once.
    let pages = stdout.matches("| v ").count();
    assert!((2..=3).contains(&pages), "{pages} pages: {stdout}");
    assert!(stdout.contains("(25000 rows)"), "{stdout}");
    let values: std::collections::BTreeSet<u64> = stdout
        .lines()
        .filter_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok())
        .collect();
    assert_eq!(values.len(), 25_000);
    let _ = std::fs::remove_dir_all(&spill);
}
