//! The worker's network entry points under malformed input. Every action (`hello`, `peers`,
//! `run` with task assignments that carry plan fragments and mutation steps, `cancel`, `free`,
//! `status`, `goodbye`), `do_get` tickets and `do_put` streams get random bytes and mutations of
//! valid messages (the seeds, made here from the protocol's own types and a real fragment). No
//! input may crash the worker or hang a call: each call answers within its deadline, and
//! afterwards the worker still stores and runs what a driver sends it.
//!
//! The corpus lives in `dtable/fuzz/`: `sql/*.sql` holds the statements the SQL fuzz starts
//! from (one a line), `worker/<entry>.<name>` raw bodies for a worker entry point (an action's
//! name, or `get` for a `do_get` ticket). Every corpus input is sent as it is first, then used as
//! a base for mutations beside the seeds built here. An input that fails the test is written to
//! `$DIRK_FUZZ_FOUND` (default: `dirk-fuzz-found` in the system's temporary directory) under the
//! name the corpus uses, ready to be copied into it.
//!
//! `DIRK_FUZZ_INPUTS=N` sets the number of inputs (default [`DEFAULT_INPUTS`]); `DIRK_FUZZ_SEED`
//! the seed (default: a fixed one, so a CI failure can be replayed); `DIRK_FUZZ_VERBOSE=1`
//! prints each input before it is sent.

use crate::kernels::fragment::{encode_params, encode_plan, FragmentHeader, FRAGMENT_KERNEL};
use crate::kernels::mutation::{Step, MUTATE_KERNEL};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use dirk_engine::{Access, ChunkId, InputSpec, ProcessorKind, TaskAssignment, TaskId, WorkerId};
use dirk_flight::protocol::{
    Hello, Peer, PutHeader, ATTACHMENT_HEADER, PROTOCOL_VERSION, TOKEN_HEADER,
};
use dirk_flight::{WorkerOptions, WorkerServer};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const DEFAULT_INPUTS: usize = 3000;
const DEFAULT_SQL_INPUTS: usize = 3000;
const TOKEN: &str = "fuzz-token";
/// A call that takes longer has hung.
const DEADLINE: Duration = Duration::from_secs(30);

/// The seed when `DIRK_FUZZ_SEED` is not set: fixed, so a CI failure can be replayed.
const DEFAULT_SEED: u64 = 0x5eed_d1e5;

/// The environment variable `name` as a number, else `default`.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The corpus directory of `kind` (`sql` or `worker`).
fn corpus_dir(kind: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
}

/// The corpus files of `kind`, by name, in name order.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(kind);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Writes an input that failed where it can be copied into the corpus; the path it took.
fn save_found(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::var_os("DIRK_FUZZ_FOUND")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("dirk-fuzz-found"));
    let path = dir.join(name);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes)) {
        Ok(()) => format!("saved as {}", path.display()),
        Err(e) => format!("not saved ({}: {e})", path.display()),
    }
}

/// xorshift64*: enough randomness to pick mutations, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `seed` changed in one of the ways that find decoder bugs, or random bytes.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match rng.below(8) {
        0 => {
            let n = rng.below(96);
            return rng.bytes(n);
        }
        1 => b.truncate(rng.below(b.len() + 1)),
        2 => {
            for _ in 0..1 + rng.below(8) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
        }
        3 => {
            let i = rng.below(b.len() + 1);
            let n = 1 + rng.below(16);
            let extra = rng.bytes(n);
            b.splice(i..i, extra);
        }
        4 if !b.is_empty() => {
            let i = rng.below(b.len());
            b[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
        }
        // A length or count field made huge.
        5 if b.len() > 4 => {
            let i = rng.below(b.len() - 4);
            b[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x0f]);
        }
        6 if !b.is_empty() => {
            let i = rng.below(b.len());
            let j = i + rng.below(b.len() - i);
            let copy = b[i..j].to_vec();
            b.splice(j..j, copy);
        }
        _ => {}
    }
    b
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap()
}

/// Valid parameters of a fragment task: a real plan (a filter, an aggregation, a sort).
async fn fragment_params() -> Vec<u8> {
    let ctx = datafusion::prelude::SessionContext::new();
    let plan = ctx
        .sql(
            "SELECT x % 3 AS k, count(*) AS n, max(upper(s)) FROM \
             (VALUES (1, 'a'), (2, 'b'), (3, NULL)) AS t(x, s) \
             WHERE x > 0 GROUP BY x % 3 ORDER BY k",
        )
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let header = FragmentHeader {
        partition: 0,
        split: None,
        feeds: Vec::new(),
        settings: Vec::new(),
        memory_limit: Some(64 << 20),
        stores: Vec::new(),
        uses_storage: false,
    };
    encode_params(&header, &encode_plan(&plan).unwrap())
}

fn batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..100)),
            Arc::new(StringArray::from_iter(
                (0..100).map(|i| (i % 5 != 0).then(|| format!("v{i}"))),
            )),
        ],
    )
    .unwrap()
}

/// The Flight messages of one valid `do_put` of [`batch`].
async fn put_messages(rows: u64) -> Vec<FlightData> {
    let encoder = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .build(futures::stream::iter([Ok(batch())]));
    let mut messages: Vec<FlightData> = encoder.map(|m| m.unwrap()).collect().await;
    messages[0].flight_descriptor = Some(FlightDescriptor::new_cmd(encode(&PutHeader {
        chunk: None,
        rows,
    })));
    messages
}

struct Client {
    flight: FlightServiceClient<Channel>,
    attachment: Option<u64>,
}

impl Client {
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert(TOKEN_HEADER, format!("Bearer {TOKEN}").parse().unwrap());
        if let Some(a) = self.attachment {
            r.metadata_mut()
                .insert(ATTACHMENT_HEADER, a.to_string().parse().unwrap());
        }
        r
    }

    /// Calls `action` and drains its answer; `Err` carries the worker's refusal.
    async fn action(&mut self, name: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let request = self.request(Action {
            r#type: name.to_string(),
            body: body.into(),
        });
        let mut answers = self.flight.do_action(request).await?.into_inner();
        let mut last = Vec::new();
        while let Some(r) = answers.next().await {
            last = r?.body.to_vec();
        }
        Ok(last)
    }

    async fn get(&mut self, ticket: Vec<u8>) -> Result<usize, tonic::Status> {
        let request = self.request(Ticket {
            ticket: ticket.into(),
        });
        let mut data = self.flight.do_get(request).await?.into_inner();
        let mut n = 0;
        while let Some(m) = data.next().await {
            m?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores a chunk; the answer's metadata.
    async fn put(&mut self, messages: Vec<FlightData>) -> Result<Vec<u8>, tonic::Status> {
        let request = self.request(futures::stream::iter(messages));
        let mut answers = self.flight.do_put(request).await?.into_inner();
        let mut last = Vec::new();
        while let Some(r) = answers.next().await {
            last = r?.app_metadata.to_vec();
        }
        Ok(last)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_neither_crashes_nor_hangs_a_worker() {
    let inputs: usize = setting("DIRK_FUZZ_INPUTS", DEFAULT_INPUTS);
    let seed: u64 = setting("DIRK_FUZZ_SEED", DEFAULT_SEED);
    let registry = Arc::new(dirk_engine::KernelRegistry::with_builtins());
    crate::register_kernels(&registry);
    let server = WorkerServer::start(
        "127.0.0.1:0",
        registry,
        WorkerOptions {
            threads: Some(2),
            token: Some(TOKEN.into()),
            memory_limit: Some(256 << 20),
            max_put_bytes: Some(64 << 20),
            // Every `hello` input that decodes attaches; the test attaches once more at the end.
            max_attachments: Some(usize::MAX),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = Client {
        flight: FlightServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        attachment: None,
    };
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        worker: WorkerId(7),
    };
    let reply = client.action("dirk.hello", encode(&hello)).await.unwrap();
    let reply: dirk_flight::protocol::HelloReply = postcard::from_bytes(&reply).unwrap();
    client.attachment = Some(reply.attachment);

    // A stored chunk, so tickets and task inputs can name one that exists.
    let meta = client.put(put_messages(100).await).await.unwrap();
    let stored = postcard::from_bytes::<dirk_engine::ChunkMeta>(&meta)
        .unwrap()
        .id;
    let fragment = fragment_params().await;
    let assignment = |kernel: &str, params: Vec<u8>, inputs: Vec<InputSpec>| TaskAssignment {
        task: TaskId(1),
        kernel: kernel.into(),
        params: params.into(),
        processor: ProcessorKind::Cpu,
        inputs,
    };
    let input = InputSpec {
        chunk: stored,
        owner: WorkerId(7),
        access: Access::Read,
    };
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("dirk.hello", encode(&hello)),
        (
            "dirk.peers",
            encode(&vec![Peer {
                worker: WorkerId(8),
                address: "127.0.0.1:1".into(),
                attachment: 1,
            }]),
        ),
        (
            "dirk.run",
            encode(&assignment(FRAGMENT_KERNEL, fragment.clone(), Vec::new())),
        ),
        (
            "dirk.run",
            encode(&assignment(
                MUTATE_KERNEL,
                crate::kernels::fragment::encode_with_header(&Step::Tag { chunk: 0 }, &[]),
                vec![input.clone()],
            )),
        ),
        ("dirk.cancel", encode(&TaskId(1))),
        ("dirk.free", encode(&vec![ChunkId(12345)])),
        ("dirk.status", Vec::new()),
        ("get", encode(&Some(stored))),
    ];
    // The corpus: sent as it is first, then mutated like the seeds above.
    let entries: Vec<&str> = seeds.iter().map(|(entry, _)| *entry).collect();
    let files: Vec<(&str, Vec<u8>)> = corpus("worker")
        .into_iter()
        .map(|(name, bytes)| {
            let entry = entries
                .iter()
                .copied()
                .find(|e| {
                    name.strip_prefix(e)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .unwrap_or_else(|| panic!("fuzz/worker/{name} names no entry point ({entries:?})"));
            (entry, bytes)
        })
        .collect();
    let replayed = files.len();
    seeds.extend(files.iter().cloned());
    let put = put_messages(100).await;

    let verbose = std::env::var_os("DIRK_FUZZ_VERBOSE").is_some();
    let mut rng = Rng(seed | 1);
    let (mut refused, mut answered) = (0usize, 0usize);
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..replayed + inputs {
        // What was sent to an entry point other than `do_put`, to save if it fails.
        let mut sent: Option<(&str, Vec<u8>)> = None;
        let pick = if i < replayed {
            seeds.len() - replayed + i
        } else {
            rng.below(seeds.len() + 2)
        };
        let outcome = match pick {
            // `do_put`: one message of a valid put changed, or the row count in the header.
            n if n >= seeds.len() => {
                let mut messages = put.clone();
                let m = rng.below(messages.len());
                match rng.below(3) {
                    0 => {
                        messages[m].data_header = mutate(&mut rng, &messages[m].data_header).into()
                    }
                    1 => messages[m].data_body = mutate(&mut rng, &messages[m].data_body).into(),
                    _ => {
                        let cmd = messages[0]
                            .flight_descriptor
                            .as_ref()
                            .map(|d| d.cmd.to_vec())
                            .unwrap_or_default();
                        messages[0].flight_descriptor =
                            Some(FlightDescriptor::new_cmd(mutate(&mut rng, &cmd)))
                    }
                }
                if verbose {
                    eprintln!("input {i}: do_put {:?}", &messages[m]);
                }
                tokio::time::timeout(DEADLINE, client.put(messages))
                    .await
                    .map(|r| r.map(|_| ()))
            }
            n => {
                let (name, body) = &seeds[n];
                let body = if i < replayed {
                    body.clone()
                } else {
                    mutate(&mut rng, body)
                };
                sent = Some((name, body.clone()));
                if verbose {
                    eprintln!("input {i}: {name} {body:?}");
                }
                if *name == "get" {
                    tokio::time::timeout(DEADLINE, client.get(body))
                        .await
                        .map(|r| r.map(|_| ()))
                } else {
                    tokio::time::timeout(DEADLINE, client.action(name, body))
                        .await
                        .map(|r| r.map(|_| ()))
                }
            }
        };
        // A `do_put` input is replayed from its seed; any other is saved for the corpus.
        let saved = || match &sent {
            Some((entry, body)) => save_found(&format!("{entry}.seed{seed}-input{i}"), body),
            None => format!("replay it with DIRK_FUZZ_SEED={seed}"),
        };
        match outcome {
            Err(_) => panic!(
                "input {i} (seed {seed}) hung the worker for {DEADLINE:?}; {}",
                saved()
            ),
            Ok(Ok(())) => answered += 1,
            Ok(Err(status)) => {
                refused += 1;
                *codes
                    .entry(format!("{:?}", status.code()))
                    .or_insert(0usize) += 1;
                // A refusal is an answer the worker chose; a handler that panicked shows as a
                // dropped stream or connection instead.
                assert!(
                    !matches!(
                        status.code(),
                        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
                    ),
                    "input {i} (seed {seed}) broke a call instead of being refused: {status:?}; {}",
                    saved()
                );
            }
        }
    }
    eprintln!("{replayed} corpus inputs and {inputs} malformed ones: {refused} refused ({codes:?}), {answered} answered, none crashed or hung the worker");

    // The worker still serves: a new attachment stores, runs and returns.
    client.attachment = None;
    let reply = client.action("dirk.hello", encode(&hello)).await.unwrap();
    let reply: dirk_flight::protocol::HelloReply = postcard::from_bytes(&reply).unwrap();
    client.attachment = Some(reply.attachment);
    client.put(put_messages(100).await).await.unwrap();
    let report = client
        .action(
            "dirk.run",
            encode(&assignment(FRAGMENT_KERNEL, fragment, Vec::new())),
        )
        .await
        .unwrap();
    let report: dirk_engine::TaskReport = postcard::from_bytes(&report).unwrap();
    assert!(report.result.is_ok(), "{report:?}");
    server.stop().await;
}

/// The statements of the SQL corpus: every line of `fuzz/sql/*.sql` but blanks and `--` comments.
fn sql_corpus() -> Vec<String> {
    corpus("sql")
        .into_iter()
        .filter(|(name, _)| name.ends_with(".sql"))
        .flat_map(|(_, bytes)| {
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("--"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `sql` with one to three of its words replaced, removed, or given a neighbour: mostly still
/// SQL, so the planner and the executor see the inputs, not only the parser.
fn mutate_sql(rng: &mut Rng, sql: &str) -> String {
    const PIECES: &[&str] = &[
        "NULL",
        "(",
        ")",
        ",",
        "'",
        "\"",
        ";",
        "*",
        "-",
        "/",
        "0",
        "-1",
        "1e308",
        "NaN",
        "-9223372036854775808",
        "99999999999999999999",
        "CAST(v AS INT)",
        "CAST(s AS DATE)",
        "DECIMAL(38, 10)",
        "t",
        "k",
        "v",
        "s",
        "w",
        "[1,2]",
        "interval '1' day",
        "'\u{0}'",
        "'é'",
        "make_array(1, NULL)",
        "unnest(make_array(k))",
        "sum(v) OVER ()",
        "LIMIT 0",
        "DISTINCT",
        "NOT",
        "AND",
        "OR",
        "IS NULL",
        "LIKE",
        "IN (1, 2)",
        "BETWEEN 1 AND",
        "GROUP BY 1",
        "ORDER BY 1",
        "HAVING",
        "UNION",
        "EXCEPT",
        "LEFT JOIN t c ON",
        "CROSS JOIN t c",
        "WHERE",
        "SELECT",
        "FROM",
        "VALUES (1)",
        "2 / 0",
        "k % 0",
        "'2024-02-30'",
        "TRUE",
        "= ANY",
    ];
    let mut words: Vec<String> = sql.split(' ').map(str::to_string).collect();
    let edits = if rng.below(10) < 7 {
        1
    } else {
        2 + rng.below(2)
    };
    for _ in 0..edits {
        let at = rng.below(words.len());
        let piece = PIECES[rng.below(PIECES.len())].to_string();
        match rng.below(4) {
            0 => words[at] = piece,
            1 => words.insert(at, piece),
            2 if words.len() > 1 => {
                words.remove(at);
            }
            _ => {
                let w = rng.below(words.len());
                words[at] = words[w].clone();
            }
        }
    }
    words.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sql_is_an_error_never_a_crash_or_a_hang() {
    let inputs: usize = setting("DIRK_FUZZ_SQL_INPUTS", DEFAULT_SQL_INPUTS);
    let seed: u64 = setting("DIRK_FUZZ_SEED", DEFAULT_SEED);
    let verbose = std::env::var_os("DIRK_FUZZ_VERBOSE").is_some();
    let session = crate::Session::builder().workers(2).build().unwrap();
    let reset = "CREATE OR REPLACE TABLE t (k INT, s VARCHAR, v DOUBLE) AS VALUES \
                 (1, 'a', 1.5), (2, 'b', NULL), (1, 'c', 3.0), (3, NULL, 2.0)";
    let statements = sql_corpus();
    let replayed = statements.len();
    let mut rng = Rng(seed | 1);
    let (mut refused, mut answered) = (0usize, 0usize);
    let mut panicked = std::collections::BTreeSet::new();
    for i in 0..replayed + inputs {
        if i % 50 == 0 || i == replayed {
            session.sql(reset).await.unwrap().collect().await.unwrap();
        }
        // The corpus as it is, then mutations of it.
        let sql = match statements.get(i) {
            Some(statement) => statement.clone(),
            None => {
                let base = rng.below(replayed);
                mutate_sql(&mut rng, &statements[base])
            }
        };
        if verbose {
            eprintln!("input {i}: {sql}");
        }
        let run = async {
            let df = session.sql(&sql).await?;
            df.collect().await
        };
        match tokio::time::timeout(DEADLINE, run).await {
            Err(_) => panic!(
                "input {i} (seed {seed}) hung for {DEADLINE:?}: {sql}; {}",
                save_found(&format!("seed{seed}-input{i}.sql"), sql.as_bytes())
            ),
            Ok(Ok(_)) => answered += 1,
            Ok(Err(e)) => {
                let message = e.to_string();
                if verbose {
                    eprintln!("  refused: {message}");
                }
                assert!(!message.is_empty(), "input {i}: an empty error for {sql}");
                assert!(
                    !message.contains('\n'),
                    "input {i}: a multi-line error for {sql}"
                );
                // A panic under Dirk, caught: the session goes on, but it is a bug to report.
                if matches!(e, crate::DirkError::Panicked { .. }) {
                    panicked.insert(format!("{sql}  =>  {message}"));
                }
                refused += 1;
            }
        }
    }
    eprintln!(
        "{replayed} corpus statements and {inputs} malformed ones: {refused} refused, {answered} \
         answered, none crashed or hung the session; {} statements made code under Dirk panic, caught as errors",
        panicked.len()
    );
    for p in &panicked {
        eprintln!("  caught panic: {p}");
    }
    // The session still answers.
    session.sql(reset).await.unwrap().collect().await.unwrap();
    let n = session
        .sql("SELECT * FROM t")
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(n, 4);
}
