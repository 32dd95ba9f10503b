//! The Flight layer on its own: worker servers in this process on loopback ports, reached over
//! real gRPC, driven by an engine context whose workers are all remote.

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, Criteria, FlightData, FlightDescriptor, Ticket};
use dirk_engine::{
    Arg, Chunk, Context, EngineError, EventLogSnapshot, FnKernel, KernelRegistry, Scope,
    TaskOptions, Worker, WorkerId,
};
use dirk_flight::{connect_cluster, ClientOptions, RemoteWorker, WorkerOptions, WorkerServer};
use std::sync::Arc;
use tonic::Code;

const TOKEN: &str = "s3cret";

/// A registry with `double` (doubles column 0, Int64, of its one input) and `firsts` (the first
/// value of column 0 of each input, in the order of its inputs).
fn registry() -> Arc<KernelRegistry> {
    let r = KernelRegistry::with_builtins();
    r.register(FnKernel::new("firsts", |call| {
        let first = |i| {
            let b = &call.input(i).batches()[0];
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            Some(a.value(0))
        };
        Ok(vec![Chunk::from_batch(ints(
            (0..call.num_inputs()).map(first),
        ))])
    }));
    r.register(FnKernel::new("double", |call| {
        let input = call.input(0).clone();
        let mut out = Vec::new();
        for b in input.batches() {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let doubled: Int64Array = a.iter().map(|v| v.map(|x| x * 2)).collect();
            out.push(
                RecordBatch::try_new(b.schema(), vec![Arc::new(doubled) as ArrayRef])
                    .map_err(|e| EngineError::kernel(e.to_string()))?,
            );
        }
        Ok(vec![Chunk::new(input.schema().clone(), out)])
    }));
    Arc::new(r)
}

async fn server(token: Option<&str>) -> WorkerServer {
    WorkerServer::start(
        "127.0.0.1:0",
        registry(),
        WorkerOptions {
            threads: Some(1),
            token: token.map(str::to_string),
            insecure: token.is_none(),
            memory_limit: Some(1 << 30),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap()
}

fn options() -> ClientOptions {
    ClientOptions {
        token: Some(TOKEN.into()),
        ..ClientOptions::default()
    }
}

fn ints(values: impl IntoIterator<Item = Option<i64>>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
    let a: Int64Array = values.into_iter().collect();
    RecordBatch::try_new(schema, vec![Arc::new(a)]).unwrap()
}

/// A worker listens on the address it is given and nothing else: bound to 127.0.0.1, it is not
/// reachable at another address of the same machine (127.0.0.2, also loopback on Linux).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_binds_only_the_address_it_is_given() {
    let s = server(Some(TOKEN)).await;
    let addr = s.local_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], addr.port()));
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(other),
    )
    .await
    .expect("a connection attempt on loopback ends at once");
    assert!(refused.is_err(), "reachable at {other}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_without_the_token_is_refused() {
    let srv = server(Some(TOKEN)).await;
    let channel = channel_to(&srv).await;
    let mut raw = FlightServiceClient::new(channel);
    let get = raw
        .do_get(Ticket {
            ticket: vec![1, 0].into(),
        })
        .await
        .unwrap_err();
    let action = raw
        .do_action(Action {
            r#type: "dirk.status".into(),
            body: Vec::new().into(),
        })
        .await
        .unwrap_err();
    let list = raw.list_flights(Criteria::default()).await.unwrap_err();
    let put = raw
        .do_put(futures::stream::iter(vec![FlightData {
            flight_descriptor: Some(FlightDescriptor::new_cmd(vec![0u8, 0])),
            ..FlightData::default()
        }]))
        .await
        .unwrap_err();
    for status in [get, action, list, put] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("requires a token"), "{status:?}");
    }
    let wrong = RemoteWorker::connect(
        &srv.local_addr().to_string(),
        WorkerId(0),
        &ClientOptions {
            token: Some("guess".into()),
            ..ClientOptions::default()
        },
    )
    .await
    .err()
    .expect("a wrong token is refused")
    .to_string();
    assert!(wrong.contains("wrong token"), "{wrong}");
    srv.stop().await;
}

async fn start(listen: &str, options: WorkerOptions) -> Result<WorkerServer, String> {
    WorkerServer::start(listen, registry(), options)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_needs_a_token_unless_insecure_on_loopback() {
    let no_token = start("127.0.0.1:0", WorkerOptions::default())
        .await
        .err()
        .expect("no token, not insecure");
    assert!(no_token.contains("needs a token"), "{no_token}");
    let open_wide = start(
        "0.0.0.0:0",
        WorkerOptions {
            insecure: true,
            ..WorkerOptions::default()
        },
    )
    .await
    .err()
    .expect("insecure off loopback");
    assert!(open_wide.contains("loopback address only"), "{open_wide}");
    assert!(!open_wide.contains("needs a token"), "{open_wide}");
    let empty = start(
        "127.0.0.1:0",
        WorkerOptions {
            token: Some(" ".into()),
            ..WorkerOptions::default()
        },
    )
    .await
    .err()
    .expect("an empty token");
    assert!(empty.contains("token is empty"), "{empty}");
    assert!(dirk_flight::resolve_token(Some(String::new())).is_err());
    assert_eq!(
        dirk_flight::resolve_token(Some("t".into())).unwrap(),
        Some("t".to_string())
    );
    let open = start(
        "127.0.0.1:0",
        WorkerOptions {
            insecure: true,
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap();
    let w = RemoteWorker::connect(
        &open.local_addr().to_string(),
        WorkerId(0),
        &ClientOptions::default(),
    )
    .await
    .unwrap();
    drop(w);
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_inputs_past_its_limits_and_keeps_serving() {
    let srv = start(
        "127.0.0.1:0",
        WorkerOptions {
            token: Some(TOKEN.into()),
            max_attachments: Some(2),
            max_put_bytes: Some(1 << 20),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap();
    let addr = srv.local_addr().to_string();
    let first = RemoteWorker::connect(&addr, WorkerId(0), &options())
        .await
        .unwrap();
    let _second = RemoteWorker::connect(&addr, WorkerId(1), &options())
        .await
        .unwrap();
    let third = RemoteWorker::connect(&addr, WorkerId(2), &options())
        .await
        .err()
        .expect("a third driver past the limit of 2")
        .to_string();
    assert!(third.contains("already serves 2 drivers"), "{third}");
    let first = Arc::new(first);
    let (big, small) = (
        Chunk::from_batch(ints((0..1_000_000).map(Some))),
        Chunk::from_batch(ints((0..100).map(Some))),
    );
    let w = first.clone();
    let (refused, kept) = tokio::task::spawn_blocking(move || {
        let refused = w.store_chunk(None, Arc::new(big)).map(|_| ());
        let kept = w
            .store_chunk(None, Arc::new(small))
            .and_then(|meta| w.fetch_chunk(meta.id));
        (refused, kept)
    })
    .await
    .unwrap();
    let refused = refused
        .expect_err("an 8 MB chunk past the 1 MiB limit")
        .to_string();
    assert!(refused.contains("limit of 1048576 bytes"), "{refused}");
    assert_eq!(kept.unwrap().rows(), 100);
    drop(first);
    srv.stop().await;
}

/// A worker serves a bounded number of calls at once, over all its connections: one more is
/// refused with a clear answer, heartbeats are still answered, and once the calls in flight end
/// it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_calls_past_its_limit_in_flight_and_still_answers_heartbeats() {
    use dirk_engine::{ProcessorKind, TaskAssignment, TaskId};
    use dirk_flight::protocol::{Hello, HelloReply, ATTACHMENT_HEADER, TOKEN_HEADER};
    use futures::StreamExt;
    let registry = registry();
    registry.register(FnKernel::new("sleep", |_| {
        std::thread::sleep(std::time::Duration::from_secs(2));
        Ok(vec![])
    }));
    let srv = WorkerServer::start(
        "127.0.0.1:0",
        registry,
        WorkerOptions {
            threads: Some(2),
            token: Some(TOKEN.into()),
            max_calls: Some(2),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap();
    let channel = channel_to(&srv).await;
    let call = move |kind: &str, body: Vec<u8>, attachment: Option<u64>| {
        let mut client = FlightServiceClient::new(channel.clone());
        let mut request = tonic::Request::new(Action {
            r#type: kind.to_string(),
            body: body.into(),
        });
        let metadata = request.metadata_mut();
        metadata.insert(TOKEN_HEADER, format!("Bearer {TOKEN}").parse().unwrap());
        if let Some(a) = attachment {
            metadata.insert(ATTACHMENT_HEADER, a.to_string().parse().unwrap());
        }
        async move {
            let mut answers = client.do_action(request).await?.into_inner();
            let mut last = Vec::new();
            while let Some(answer) = answers.next().await {
                last = answer?.body.to_vec();
            }
            Ok::<_, tonic::Status>(last)
        }
    };
    let hello = postcard::to_stdvec(&Hello {
        protocol: dirk_flight::PROTOCOL_VERSION,
        worker: WorkerId(3),
    })
    .unwrap();
    let reply: HelloReply =
        postcard::from_bytes(&call("dirk.hello", hello, None).await.unwrap()).unwrap();
    let attachment = Some(reply.attachment);
    let sleep = |task: u64| {
        postcard::to_stdvec(&TaskAssignment {
            task: TaskId(task),
            kernel: "sleep".into(),
            params: Vec::new().into(),
            processor: ProcessorKind::Cpu,
            inputs: Vec::new(),
        })
        .unwrap()
    };
    let running: Vec<_> = (1..=2)
        .map(|t| tokio::spawn(call("dirk.run", sleep(t), attachment)))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let refused = call("dirk.run", sleep(3), attachment)
        .await
        .expect_err("a third call past the limit of 2");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("limit of 2 calls at once"),
        "{refused:?}"
    );
    call("dirk.status", Vec::new(), attachment)
        .await
        .expect("a heartbeat is answered while the worker is at its limit");
    for r in running {
        r.await.unwrap().expect("the calls within the limit run");
    }
    call("dirk.run", sleep(4), attachment)
        .await
        .expect("served again once the calls in flight ended");
    srv.stop().await;
}

/// A driver that attaches and then goes silent (it died) loses its attachment after the idle
/// timeout, while a driver that keeps calling keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_whose_driver_went_silent_expires() {
    use dirk_flight::protocol::{Hello, StatusReply, TOKEN_HEADER};
    let srv = start(
        "127.0.0.1:0",
        WorkerOptions {
            token: Some(TOKEN.into()),
            attachment_idle_timeout: Some(std::time::Duration::from_secs(1)),
            ..WorkerOptions::default()
        },
    )
    .await
    .unwrap();
    let channel = channel_to(&srv).await;
    let mut raw = FlightServiceClient::new(channel);
    let mut hello = tonic::Request::new(Action {
        r#type: "dirk.hello".into(),
        body: postcard::to_stdvec(&Hello {
            protocol: dirk_flight::PROTOCOL_VERSION,
            worker: WorkerId(5),
        })
        .unwrap()
        .into(),
    });
    hello
        .metadata_mut()
        .insert(TOKEN_HEADER, format!("Bearer {TOKEN}").parse().unwrap());
    raw.do_action(hello).await.unwrap();
    // A live driver: its heartbeat keeps its attachment.
    let live = Arc::new(
        RemoteWorker::connect(&srv.local_addr().to_string(), WorkerId(6), &options())
            .await
            .unwrap(),
    );
    let attachments = |w: Arc<RemoteWorker>| async move {
        let reply = tokio::task::spawn_blocking(move || w.status_reply())
            .await
            .unwrap()
            .unwrap();
        let reply: StatusReply = reply;
        reply.attachments
    };
    assert_eq!(attachments(live.clone()).await, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while attachments(live.clone()).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent driver's attachment never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(live);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_go_and_come_back_whole() {
    let srv = server(Some(TOKEN)).await;
    let w = RemoteWorker::connect(&srv.local_addr().to_string(), WorkerId(3), &options())
        .await
        .unwrap();
    assert_eq!(w.memory_limit(), Some(1 << 30));
    let strings = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    let wide = RecordBatch::try_new(
        strings.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..100_000)),
            Arc::new(StringArray::from_iter(
                (0..100_000).map(|i| (i % 7 != 0).then(|| format!("row {i}"))),
            )),
        ],
    )
    .unwrap();
    let chunks = vec![
        // Several batches, nulls, strings, more than one 2 MiB Flight message.
        Chunk::new(strings.clone(), vec![wide.clone(), wide.slice(10, 5)]),
        // A slice with a non-zero offset.
        Chunk::from_batch(ints((0..50).map(|i| (i % 3 != 0).then_some(i))).slice(7, 30)),
        // No rows at all: the schema still arrives.
        Chunk::new(strings.clone(), Vec::new()),
        // Types the Flight encoder rewrites unless told not to: dictionaries (top-level and
        // nested) and 64-bit list offsets, whole and sliced.
        Chunk::from_batch(nested_types()),
        Chunk::from_batch(nested_types().slice(1, 2)),
        // String views (sent as offsets) beside binary views: short and long strings, nulls,
        // field metadata, several batches and a slice.
        Chunk::new(views().schema(), vec![views(), views().slice(3, 40_000)]),
    ];
    let w = Arc::new(w);
    for chunk in chunks {
        let (sent, w) = (chunk.clone(), w.clone());
        let back = tokio::task::spawn_blocking(move || {
            let meta = w.store_chunk(None, Arc::new(sent))?;
            assert_eq!(meta.owner, WorkerId(3));
            assert_eq!(meta.id.minted_by(), WorkerId(3));
            w.fetch_chunk(meta.id)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(back.schema(), chunk.schema());
        assert_eq!(back.rows(), chunk.rows());
        let concat = |c: &Chunk| arrow::compute::concat_batches(c.schema(), c.batches()).unwrap();
        assert_eq!(concat(&back), concat(&chunk));
    }
    let missing = {
        let w = w.clone();
        tokio::task::spawn_blocking(move || w.fetch_chunk(dirk_engine::ChunkId(12345)))
            .await
            .unwrap()
            .expect_err("no such chunk")
            .to_string()
    };
    assert!(missing.contains("not found"), "{missing}");
    drop(w);
    srv.stop().await;
}

/// 50,000 rows of string views (inlined and not, with nulls and field metadata) and binary
/// views.
fn views() -> RecordBatch {
    use arrow::array::{BinaryViewArray, StringViewArray};
    let strings: StringViewArray = (0..50_000)
        .map(|i| (i % 5 != 0).then(|| "é".repeat(i % 20)))
        .collect();
    let binary: BinaryViewArray = (0..50_000u32)
        .map(|i| Some(i.to_le_bytes().repeat(i as usize % 6)))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("s", DataType::Utf8View, true).with_metadata(std::collections::HashMap::from([
            ("unit".to_string(), "name".to_string()),
        ])),
        Field::new("b", DataType::BinaryView, true),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(strings), Arc::new(binary)]).unwrap()
}

/// Three rows of a dictionary column, a large list, a list of dictionaries, and a union whose
/// field has metadata.
fn nested_types() -> RecordBatch {
    use arrow::array::{DictionaryArray, Int32Array, Int8Array, LargeListBuilder, ListArray};
    use arrow::array::{Int64Builder, UnionArray};
    use arrow::buffer::{OffsetBuffer, ScalarBuffer};
    use arrow::datatypes::{Int8Type, UnionFields};
    let dictionary = |n: usize| -> ArrayRef {
        Arc::new(
            (0..n)
                .map(|i| ["red", "green"][i % 2])
                .collect::<DictionaryArray<Int8Type>>(),
        )
    };
    let mut large = LargeListBuilder::new(Int64Builder::new());
    for row in [&[1, 2][..], &[], &[3, 4, 5]] {
        large.values().append_slice(row);
        large.append(true);
    }
    let large: ArrayRef = Arc::new(large.finish());
    let listed: ArrayRef = Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(
            dictionary(0).data_type().clone(),
            true,
        )),
        OffsetBuffer::new(ScalarBuffer::from(vec![0, 2, 2, 5])),
        dictionary(5),
        None,
    ));
    let union_fields = UnionFields::try_new(
        [3, 1],
        [
            Field::new("int", DataType::Int32, false),
            Field::new("small", DataType::Int8, false),
        ],
    )
    .unwrap();
    let union: ArrayRef = Arc::new(
        UnionArray::try_new(
            union_fields.clone(),
            ScalarBuffer::from(vec![3i8, 1, 3]),
            None,
            vec![
                Arc::new(Int32Array::from(vec![10, 0, 30])),
                Arc::new(Int8Array::from(vec![0, 2, 0])),
            ],
        )
        .unwrap(),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("dict", dictionary(0).data_type().clone(), true),
        Field::new("large", large.data_type().clone(), true),
        Field::new("listed", listed.data_type().clone(), true),
        Field::new("union", union.data_type().clone(), false).with_metadata(
            std::collections::HashMap::from([("unit".to_string(), "ms".to_string())]),
        ),
    ]));
    RecordBatch::try_new(schema, vec![dictionary(3), large, listed, union]).unwrap()
}

/// Attaches `workers` to a fresh context, puts `input` on worker 0 and runs `double` on worker 1,
/// which must fetch it from worker 0: the output, the event log, and the context's workers.
async fn double_on_worker_1(
    workers: Vec<Arc<RemoteWorker>>,
    input: RecordBatch,
) -> (Vec<Chunk>, EventLogSnapshot, Vec<WorkerId>) {
    tokio::task::spawn_blocking(move || {
        let ctx = Context::builder().workers(0).build().unwrap();
        for w in workers {
            ctx.add_worker(w).unwrap();
        }
        let input = ctx
            .put_on(WorkerId(0), Chunk::from_batch(input), false)
            .unwrap();
        let task = ctx.spawn(
            "double",
            vec![Arg::read(&input)],
            TaskOptions::new().scope(Scope::worker(WorkerId(1))),
        );
        (task.fetch().unwrap(), ctx.event_log(), ctx.workers())
    })
    .await
    .unwrap()
}

/// Tasks run on remote workers; an input on another worker is fetched by the worker that runs
/// the task, straight from its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_remotely_and_fetch_inputs_from_each_other() {
    let (a, b) = (server(Some(TOKEN)).await, server(Some(TOKEN)).await);
    let addresses = vec![a.local_addr().to_string(), b.local_addr().to_string()];
    let workers = connect_cluster(&addresses, &options()).await.unwrap();
    let (out, log, ids) = double_on_worker_1(workers, ints([Some(1), None, Some(3)])).await;
    assert_eq!(ids, vec![WorkerId(0), WorkerId(1)]);
    assert_eq!(out[0].batches()[0], ints([Some(2), None, Some(6)]));
    let record = log
        .records
        .iter()
        .find(|r| r.name.as_ref() == "double")
        .unwrap();
    assert_eq!(record.worker, Some(WorkerId(1)));
    assert!(record.bytes_moved > 0, "the input moved from worker 0 to 1");
    assert!(log
        .transfers
        .iter()
        .any(|t| t.from == WorkerId(0) && t.to == WorkerId(1)));
    a.stop().await;
    b.stop().await;
}

/// A task that reads more chunks from one peer than a worker fetches from it at a time gets them
/// all, each in its place.
#[test]
fn a_task_reading_a_hundred_chunks_of_one_peer_gets_them_all_in_order() {
    // Its own runtime, so that a hang fails the test instead of holding it: a runtime waits
    // at shutdown for its blocking tasks, and a hung task keeps one on the worker's side.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b, workers) = runtime.block_on(async {
        let (a, b) = (server(Some(TOKEN)).await, server(Some(TOKEN)).await);
        let addresses = vec![a.local_addr().to_string(), b.local_addr().to_string()];
        let workers = connect_cluster(&addresses, &options()).await.unwrap();
        (a, b, workers)
    });
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ctx = Context::builder().workers(0).build().unwrap();
        for w in workers {
            ctx.add_worker(w).unwrap();
        }
        let chunks: Vec<_> = (0..100)
            .map(|i| {
                let batch = ints((i * 1000..i * 1000 + 1000).map(Some));
                ctx.put_on(WorkerId(0), Chunk::from_batch(batch), false)
                    .unwrap()
            })
            .collect();
        let task = ctx.spawn(
            "firsts",
            chunks.iter().map(Arg::read).collect(),
            TaskOptions::new().scope(Scope::worker(WorkerId(1))),
        );
        let _ = done.send((task.fetch().unwrap(), ctx.event_log()));
    });
    // A fetch bound that lost a turn would hang the task: the deadline makes that a failure.
    let Ok((out, log)) = answer.recv_timeout(std::time::Duration::from_secs(60)) else {
        runtime.shutdown_background();
        panic!("the task did not get its 100 inputs within 60 s");
    };
    assert_eq!(out[0].batches()[0], ints((0..100).map(|i| Some(i * 1000))));
    let moved = log
        .transfers
        .iter()
        .filter(|t| t.from == WorkerId(0) && t.to == WorkerId(1))
        .count();
    assert_eq!(moved, 100, "each chunk moved from worker 0 to 1");
    runtime.block_on(async {
        a.stop().await;
        b.stop().await;
    });
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key (PEM).
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    (
        made.cert.pem().into_bytes(),
        made.signing_key.serialize_pem().into_bytes(),
    )
}

/// With certificates, the driver talks TLS to the workers and the workers to each other (a
/// task's input is fetched from its owner over TLS); a driver without TLS, or trusting another
/// authority, is refused with an error naming the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_between_the_driver_and_workers_and_between_workers() {
    let (cert, key) = self_signed();
    let tls_server = || {
        WorkerServer::start(
            "127.0.0.1:0",
            registry(),
            WorkerOptions {
                threads: Some(1),
                token: Some(TOKEN.into()),
                tls_identity: Some((cert.clone(), key.clone())),
                tls_ca: Some(cert.clone()),
                ..WorkerOptions::default()
            },
        )
    };
    let (a, b) = (tls_server().await.unwrap(), tls_server().await.unwrap());
    let addresses = vec![a.local_addr().to_string(), b.local_addr().to_string()];
    let tls = ClientOptions {
        token: Some(TOKEN.into()),
        tls_ca: Some(cert.clone()),
        tls_domain: Some("localhost".into()),
        ..ClientOptions::default()
    };
    let workers = connect_cluster(&addresses, &tls).await.unwrap();
    let (out, log, _) = double_on_worker_1(workers, ints([Some(20), None])).await;
    assert_eq!(out[0].batches()[0], ints([Some(40), None]));
    assert!(
        log.transfers
            .iter()
            .any(|t| t.from == WorkerId(0) && t.to == WorkerId(1)),
        "worker 1 fetched the input from worker 0"
    );

    let plain = RemoteWorker::connect(&addresses[0], WorkerId(0), &options())
        .await
        .err()
        .expect("plain HTTP/2 to a TLS worker fails")
        .to_string();
    assert!(plain.contains(&addresses[0]), "{plain}");
    let (other_ca, _) = self_signed();
    let distrusted = RemoteWorker::connect(
        &addresses[0],
        WorkerId(0),
        &ClientOptions {
            tls_ca: Some(other_ca),
            ..tls.clone()
        },
    )
    .await
    .err()
    .expect("a certificate from another authority is refused")
    .to_string();
    assert!(distrusted.contains(&addresses[0]), "{distrusted}");
    assert!(!distrusted.contains('\n'), "{distrusted}");
    a.stop().await;
    b.stop().await;
}

/// A plain gRPC channel to `srv`, for calls the client does not make.
async fn channel_to(srv: &WorkerServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", srv.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}
