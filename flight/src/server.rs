//! `dirk worker`: a worker process serving Arrow Flight.
//!
//! Each driver that says `hello` gets an *attachment*: its own [`InProcessWorker`] (chunk store,
//! the id the driver gave it) over the process's one CPU pool. Tasks run exactly as they do in
//! the embedded engine; inputs held by other workers are fetched from them directly, through
//! [`RemoteWorker`] clients of the peers the driver named.

use crate::client::{ClientOptions, RemoteWorker};
use crate::protocol::{
    self, action, Hello, HelloReply, Peer, StatusReply, ATTACHMENT_HEADER, PROTOCOL_VERSION,
    TOKEN_ENV, TOKEN_HEADER,
};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use dirk_engine::{
    Chunk, ChunkId, CpuProcessor, EngineError, InProcessWorker, KernelRegistry, PeerDirectory,
    ProcessorRef, ReportSink, TaskAssignment, TaskId, Worker, WorkerEnv, WorkerEnvRef, WorkerId,
};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// How a worker process runs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// CPU threads for tasks (default: one per core).
    pub threads: Option<usize>,
    /// The shared token every call must carry. Without one the worker starts only when
    /// [`insecure`](Self::insecure) is set and it listens on a loopback address.
    pub token: Option<String>,
    /// Accept callers without a token (loopback addresses only): for a single machine's tests.
    pub insecure: bool,
    /// TLS: the worker's certificate and key (PEM). Without them the worker speaks plain HTTP/2.
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// TLS: the certificate authority (PEM) to verify other workers by when fetching from them.
    pub tls_ca: Option<Vec<u8>>,
    /// Memory this worker may use, in bytes: one budget in the worker's environment that its
    /// resident chunks and its tasks' operators share, for every driver attached to it.
    /// Default: three quarters of the machine's memory ([`dirk_engine::default_budget`]).
    pub memory_limit: Option<u64>,
    /// Where tasks write spill files (default: `dirk-spill` under the system's temporary
    /// directory).
    pub spill_dir: Option<std::path::PathBuf>,
    /// An attachment whose driver has not called for this long is dropped with its chunks
    /// (a driver that died); drivers send a heartbeat every second. Default 60 s.
    pub attachment_idle_timeout: Option<Duration>,
    /// Drivers (sessions) attached at once; a `hello` beyond it is refused. Default
    /// [`DEFAULT_MAX_ATTACHMENTS`].
    pub max_attachments: Option<usize>,
    /// The largest chunk one `do_put` may carry, in bytes of Arrow memory; a bigger one is
    /// refused as soon as it passes the limit. Default [`DEFAULT_MAX_PUT_BYTES`].
    pub max_put_bytes: Option<u64>,
    /// Calls that take work (task runs, chunk fetches and stores, attachments) the worker serves
    /// at once, over all connections and drivers (a fetch counts until its chunk is sent); one
    /// past it is refused with `RESOURCE_EXHAUSTED`. Heartbeats, cancels and frees are not
    /// counted. Default
    /// [`DEFAULT_MAX_CALLS`].
    pub max_calls: Option<usize>,
}

/// Default of [`WorkerOptions::max_attachments`].
pub const DEFAULT_MAX_ATTACHMENTS: usize = 64;
/// Default of [`WorkerOptions::max_put_bytes`]: 16 GiB.
pub const DEFAULT_MAX_PUT_BYTES: u64 = 16 << 30;
/// Default of [`WorkerOptions::max_calls`]: a driver has a few calls per task slot in flight
/// and a peer at most 8 fetches, so this is far above what a cluster of 64 drivers needs.
pub const DEFAULT_MAX_CALLS: usize = 4096;
/// Concurrent calls (HTTP/2 streams) per connection: a driver runs at most a few per task slot,
/// a peer at most 8 fetches.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

impl WorkerOptions {
    /// CPU threads for tasks: [`WorkerOptions::threads`], else one per core.
    pub fn cpu_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

struct Attachment {
    worker: Arc<InProcessWorker>,
    peers: PeerDirectory,
    last_seen: Mutex<Instant>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // The directory holds the worker itself: break the cycle.
        self.peers.clear();
    }
}

struct WorkerState {
    options: WorkerOptions,
    registry: Arc<KernelRegistry>,
    processors: Vec<ProcessorRef>,
    /// One environment for the process: every attachment's tasks share its memory budget.
    env: WorkerEnvRef,
    attachments: Mutex<HashMap<u64, Arc<Attachment>>>,
    next_attachment: AtomicU64,
    peer_client: ClientOptions,
    /// One permit per call being served ([`WorkerOptions::max_calls`]).
    calls: Arc<tokio::sync::Semaphore>,
}

/// The Flight service of one worker process.
#[derive(Clone)]
struct WorkerService {
    state: Arc<WorkerState>,
}

/// A running worker server.
pub struct WorkerServer {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
}

impl WorkerServer {
    /// Binds `listen` (a `HOST:PORT`; port 0 picks a free one) and serves on the current tokio
    /// runtime until [`WorkerServer::stop`] or the process ends.
    pub async fn start(
        listen: &str,
        registry: Arc<KernelRegistry>,
        options: WorkerOptions,
    ) -> Result<WorkerServer, EngineError> {
        let bind_error = |message: String| EngineError::Remote {
            peer: format!("dirk worker --listen {listen}"),
            message,
        };
        if let Some(token) = &options.token {
            protocol::check_not_empty(token).map_err(|e| bind_error(e.to_string()))?;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| bind_error(format!("cannot listen: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| bind_error(e.to_string()))?;
        if options.token.is_none() && options.insecure && !local_addr.ip().is_loopback() {
            return Err(bind_error(format!(
                "--insecure is allowed on a loopback address only; {local_addr} can be reached \
                 from other machines: give a token (--token or {TOKEN_ENV})"
            )));
        }
        if options.token.is_none() && !options.insecure {
            return Err(bind_error(format!(
                "a worker needs a token (--token or {TOKEN_ENV}); without one it accepts anyone \
                 who reaches {local_addr} and runs what they send. `--insecure` allows no token \
                 on a loopback address only"
            )));
        }
        let cpu: ProcessorRef = Arc::new(CpuProcessor::new(options.cpu_threads(), "dirk-worker"));
        let state = Arc::new(WorkerState {
            peer_client: ClientOptions {
                token: options.token.clone(),
                tls_ca: options.tls_ca.clone(),
                ..ClientOptions::default()
            },
            env: WorkerEnv::builder()
                .name(format!("the worker at {local_addr}"))
                .memory_limit(
                    options
                        .memory_limit
                        .map(|m| m as usize)
                        .or_else(|| dirk_engine::default_budget(1)),
                )
                .spill_dir(options.spill_dir.clone())
                .build(),
            calls: Arc::new(tokio::sync::Semaphore::new(
                options.max_calls.unwrap_or(DEFAULT_MAX_CALLS),
            )),
            options,
            registry,
            processors: vec![cpu],
            attachments: Mutex::new(HashMap::new()),
            // Keys start at a random point: a restarted worker does not honour old keys.
            next_attachment: AtomicU64::new(crate::local::random_u64(2) >> 1),
        });
        let mut builder = Server::builder()
            .initial_stream_window_size(protocol::STREAM_WINDOW)
            .initial_connection_window_size(protocol::CONNECTION_WINDOW)
            .max_frame_size(protocol::MAX_FRAME)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
        if let Some((cert, key)) = &state.options.tls_identity {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .map_err(|e| bind_error(format!("TLS configuration: {e}")))?;
        }
        let token = state.options.token.clone();
        let service = FlightServiceServer::new(WorkerService {
            state: state.clone(),
        })
        .max_decoding_message_size(protocol::MAX_MESSAGE)
        .max_encoding_message_size(protocol::MAX_MESSAGE);
        let service = tonic::service::interceptor::InterceptedService::new(
            service,
            move |req: Request<()>| check_token(token.as_deref(), req),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Tonic applies `tcp_nodelay` only to listeners it binds itself; without it on the
        // accepted sockets, Nagle's algorithm held each small reply back for a delayed ACK
        // (about 40 ms per fetch and per task answer).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let done = tokio::spawn(async move {
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| e.to_string())
        });
        tokio::spawn(expire_idle_attachments(Arc::downgrade(&state)));
        Ok(WorkerServer {
            local_addr,
            stop: Some(stop_tx),
            done,
        })
    }

    /// The address it listens on (with the port it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the server fails or is stopped.
    pub async fn wait(self) -> Result<(), EngineError> {
        let addr = self.local_addr;
        let _keep_stop_sender = self.stop;
        match self.done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Remote {
                peer: format!("dirk worker at {addr}"),
                message: e,
            }),
            Err(e) => Err(EngineError::Remote {
                peer: format!("dirk worker at {addr}"),
                message: e.to_string(),
            }),
        }
    }

    /// Stops accepting calls and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.done.await;
    }
}

#[allow(clippy::result_large_err)] // tonic's interceptor signature
fn check_token(token: Option<&str>, req: Request<()>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(req);
    };
    let given = req
        .metadata()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(req),
        Some(_) => Err(Status::unauthenticated("wrong token")),
        None => Err(Status::unauthenticated(
            "this worker requires a token (dirk --token, or DIRK_TOKEN)",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn expire_idle_attachments(state: std::sync::Weak<WorkerState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(state) = state.upgrade() else { return };
        let idle = state
            .options
            .attachment_idle_timeout
            .unwrap_or(Duration::from_secs(60));
        let expired: Vec<Arc<Attachment>> = {
            let mut map = state.attachments.lock();
            let keys: Vec<u64> = map
                .iter()
                .filter(|(_, a)| a.last_seen.lock().elapsed() > idle)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for a in expired {
            eprintln!(
                "dirk worker: dropping {} (its driver has not called for {}s)",
                a.worker.id(),
                idle.as_secs()
            );
        }
    }
}

fn to_status(e: EngineError) -> Status {
    match e {
        EngineError::ChunkNotFound { .. } | EngineError::UnknownChunk { .. } => {
            Status::not_found(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => Status::invalid_argument(other.to_string()),
    }
}

impl WorkerService {
    /// A permit to serve one call, held until the call's answer is sent.
    #[allow(clippy::result_large_err)]
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.state.calls.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this worker is serving its limit of {} calls at once; try again",
                self.state.options.max_calls.unwrap_or(DEFAULT_MAX_CALLS)
            ))
        })
    }

    #[allow(clippy::result_large_err)]
    fn attachment<T>(&self, req: &Request<T>) -> Result<Arc<Attachment>, Status> {
        let key = req
            .metadata()
            .get(ATTACHMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Status::failed_precondition("no attachment: say dirk.hello first"))?;
        let a = self
            .state
            .attachments
            .lock()
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(
                "unknown attachment: this worker restarted or dropped the driver after a silence",
            )
            })?;
        *a.last_seen.lock() = Instant::now();
        Ok(a)
    }

    #[allow(clippy::result_large_err)]
    fn hello(&self, body: &[u8]) -> Result<HelloReply, Status> {
        let hello: Hello = protocol::decode(body, "hello").map_err(|e| {
            // A driver of another version may not even encode `Hello` the same way.
            Status::failed_precondition(format!(
                "{e}; this worker speaks Dirk protocol {PROTOCOL_VERSION}"
            ))
        })?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: the driver speaks Dirk protocol {}, this worker speaks {}",
                hello.protocol, PROTOCOL_VERSION
            )));
        }
        let max = self
            .state
            .options
            .max_attachments
            .unwrap_or(DEFAULT_MAX_ATTACHMENTS);
        if self.state.attachments.lock().len() >= max {
            return Err(Status::resource_exhausted(format!(
                "this worker already serves {max} drivers (its limit); one must detach, or its \
                 attachment expire, before another attaches"
            )));
        }
        let peers = PeerDirectory::default();
        let worker = Arc::new(
            InProcessWorker::with_processors(
                hello.worker,
                self.state.processors.clone(),
                self.state.registry.clone(),
                peers.clone(),
            )
            .with_env(Arc::clone(&self.state.env)),
        );
        peers.add(worker.clone());
        let key = self.state.next_attachment.fetch_add(1, Ordering::Relaxed);
        let processors = worker.processors();
        self.state.attachments.lock().insert(
            key,
            Arc::new(Attachment {
                worker,
                peers,
                last_seen: Mutex::new(Instant::now()),
            }),
        );
        Ok(HelloReply {
            protocol: PROTOCOL_VERSION,
            attachment: key,
            processors,
            memory_limit: self.state.env.memory_limit().map(|m| m as u64),
            clock_us: dirk_engine::eventlog::now_us(),
            release: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    fn set_peers(&self, a: &Attachment, peers: Vec<Peer>) -> Result<(), EngineError> {
        let me = a.worker.id();
        for p in peers.into_iter().filter(|p| p.worker != me) {
            let peer = RemoteWorker::peer(p, self.state.peer_client.clone())?;
            a.peers.add(Arc::new(peer));
        }
        Ok(())
    }

    async fn run(a: Arc<Attachment>, assignment: TaskAssignment) -> Vec<u8> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        a.worker.run_task(
            assignment,
            ReportSink::from_fn(move |report| {
                if let Some(tx) = tx.lock().take() {
                    let _ = tx.send(report);
                }
            }),
        );
        match rx.await {
            Ok(report) => protocol::encode(&report),
            // The worker dropped the sink without reporting: it cannot, every path reports.
            Err(_) => Vec::new(),
        }
    }
}

type Reply<T> = Result<Response<BoxStream<'static, Result<T, Status>>>, Status>;

fn one<T: Send + 'static>(value: T) -> Reply<T> {
    Ok(Response::new(stream::once(async { Ok(value) }).boxed()))
}

fn body(bytes: Vec<u8>) -> arrow_flight::Result {
    arrow_flight::Result { body: bytes.into() }
}

#[tonic::async_trait]
impl FlightService for WorkerService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "Dirk workers authenticate every call with a bearer token; no handshake",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("get_flight_info"))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let permit = self.admit()?;
        let a = self.attachment(&request)?;
        let id: Option<ChunkId> = protocol::decode(&request.get_ref().ticket, "ticket")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = id.ok_or_else(|| Status::invalid_argument("a do_get ticket names a chunk"))?;
        let chunk = a.worker.fetch_chunk(id).map_err(to_status)?;
        let stream = protocol::encode_chunk(chunk.schema().clone(), chunk.batches(), None)
            .map_err(flight_status)
            // The call lasts until its last message is sent or the caller goes away.
            .map(move |message| {
                let _serving = &permit;
                message
            });
        Ok(Response::new(stream.boxed()))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let _serving = self.admit()?;
        let a = self.attachment(&request)?;
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty do_put"))?;
        let header: protocol::PutHeader = first
            .flight_descriptor
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("do_put without a descriptor"))
            .and_then(|d| {
                protocol::decode(&d.cmd, "do_put header")
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        let data = stream::once(async { Ok(first) })
            .chain(incoming)
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut decoded = protocol::ChunkReader::new(
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data),
        );
        let max_bytes = self
            .state
            .options
            .max_put_bytes
            .unwrap_or(DEFAULT_MAX_PUT_BYTES);
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut batches = Vec::new();
        while let Some(batch) = decoded.next().await {
            let batch = batch.map_err(flight_status)?;
            rows += batch.num_rows() as u64;
            bytes += batch.get_array_memory_size() as u64;
            // Refused as soon as it is too big: nothing more is buffered.
            if rows > header.rows {
                return Err(Status::invalid_argument(format!(
                    "do_put carried more than the {} rows its header announced",
                    header.rows
                )));
            }
            if bytes > max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "do_put carried more than this worker's limit of {max_bytes} bytes per chunk"
                )));
            }
            batches.push(batch);
        }
        let schema = decoded
            .schema()
            .ok_or_else(|| Status::invalid_argument("do_put carried no schema"))?;
        let chunk = Chunk::new(schema, batches);
        if chunk.rows() != header.rows {
            // The sender stopped part-way: keep nothing rather than half a chunk.
            return Err(Status::data_loss(format!(
                "incomplete chunk: {} of {} rows arrived",
                chunk.rows(),
                header.rows
            )));
        }
        let meta = a
            .worker
            .store_chunk(header.chunk, Arc::new(chunk))
            .map_err(to_status)?;
        one(PutResult {
            app_metadata: protocol::encode(&meta).into(),
        })
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let kind = request.get_ref().r#type.clone();
        // Heartbeats, cancels and frees are answered at once and hold nothing: a busy worker
        // must still answer them, or its driver would think it lost.
        let _serving = match kind.as_str() {
            action::HELLO | action::PEERS | action::RUN => Some(self.admit()?),
            _ => None,
        };
        if kind == action::HELLO {
            let reply = self.hello(&request.get_ref().body)?;
            return one(body(protocol::encode(&reply)));
        }
        let a = self.attachment(&request)?;
        let raw = &request.get_ref().body;
        let bad = |e: EngineError| Status::invalid_argument(e.to_string());
        match kind.as_str() {
            action::PEERS => {
                let peers: Vec<Peer> = protocol::decode(raw, "peers").map_err(bad)?;
                self.set_peers(&a, peers).map_err(bad)?;
                one(body(Vec::new()))
            }
            action::RUN => {
                let assignment: TaskAssignment =
                    protocol::decode(raw, "task assignment").map_err(bad)?;
                one(body(Self::run(a, assignment).await))
            }
            action::CANCEL => {
                let task: TaskId = protocol::decode(raw, "task id").map_err(bad)?;
                a.worker.cancel_task(task);
                one(body(Vec::new()))
            }
            action::FREE => {
                let ids: Vec<ChunkId> = protocol::decode(raw, "chunk ids").map_err(bad)?;
                a.worker.free_chunks(&ids);
                one(body(Vec::new()))
            }
            action::STATUS => {
                let reply = StatusReply {
                    status: a.worker.status(),
                    memory_limit: self.state.env.memory_limit().map(|m| m as u64),
                    attachments: self.state.attachments.lock().len(),
                    clock_us: dirk_engine::eventlog::now_us(),
                };
                one(body(protocol::encode(&reply)))
            }
            action::GOODBYE => {
                let id: WorkerId = a.worker.id();
                self.state
                    .attachments
                    .lock()
                    .retain(|_, other| other.worker.id() != id || !Arc::ptr_eq(other, &a));
                one(body(Vec::new()))
            }
            other => Err(Status::unimplemented(format!("unknown action `{other}`"))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            action::HELLO,
            action::PEERS,
            action::RUN,
            action::CANCEL,
            action::FREE,
            action::STATUS,
            action::GOODBYE,
        ]
        .into_iter()
        .map(|name| {
            Ok(ActionType {
                r#type: name.to_string(),
                description: String::new(),
            })
        })
        .collect::<Vec<_>>();
        Ok(Response::new(stream::iter(actions).boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}
