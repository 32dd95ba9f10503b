//! The driver's side (and a worker's side, towards its peers): [`RemoteWorker`], the engine's
//! [`Worker`] trait over Arrow Flight.
//!
//! The engine's worker interface is synchronous; calls run on one process-wide tokio runtime
//! (`dirk-flight` threads) and the caller's thread waits for the answer. Tasks are fire and
//! forget: `run_task` returns at once and the report arrives when the `dirk.run` action answers.

use crate::clock::ClockOffset;
use crate::failure::{chain, describe, flight, refused};
use crate::protocol::{
    self, action, Hello, HelloReply, Peer, PutHeader, StatusReply, ATTACHMENT_HEADER,
    PROTOCOL_VERSION, TOKEN_HEADER,
};
use arrow_flight::decode::{FlightDataDecoder, FlightRecordBatchStream};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightDescriptor, Ticket};
use bytes::Bytes;
use dirk_engine::{
    Chunk, ChunkId, ChunkMeta, EngineError, PendingChunk, ProcessorKind, ReportSink,
    TaskAssignment, TaskId, TaskReport, Worker, WorkerId, WorkerStatus,
};
use futures::{future, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// How a driver (or a worker, towards its peers) talks to workers.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The shared token sent with every call.
    pub token: Option<String>,
    /// TLS: the certificate authority (PEM) that signed the workers' certificates. With it,
    /// calls use TLS; without it, plain HTTP/2.
    pub tls_ca: Option<Vec<u8>>,
    /// TLS: the name to verify the workers' certificates against (default: the host in each
    /// address).
    pub tls_domain: Option<String>,
    /// How long to wait for a TCP connection and for a control call's answer.
    pub connect_timeout: Duration,
    /// How often the driver asks each worker for its status.
    pub heartbeat: Duration,
    /// A worker that has not answered a heartbeat for this long is declared lost.
    pub lost_after: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            tls_ca: None,
            tls_domain: None,
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(5),
        }
    }
}

/// The runtime every Flight call of this process runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dirk-flight")
            .enable_all()
            .build()
            .expect("cannot start the Flight client runtime")
    })
}

/// Runs `fut` on the client runtime and waits for it from a thread outside that runtime.
fn block<T: Send + 'static>(
    fut: impl Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, EngineError> {
    start(fut)()
}

/// Starts `fut` on the client runtime; the returned function waits for it from a thread outside
/// that runtime.
fn start<T: Send + 'static>(
    fut: impl Future<Output = Result<T, EngineError>> + Send + 'static,
) -> impl FnOnce() -> Result<T, EngineError> + Send + 'static {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    move || rx.recv().unwrap_or(Err(EngineError::Shutdown))
}

/// Adds the token and the attachment key to every call.
#[derive(Clone)]
struct Headers {
    token: Option<MetadataValue<Ascii>>,
    attachment: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert(TOKEN_HEADER, t.clone());
        }
        if let Some(a) = &self.attachment {
            req.metadata_mut().insert(ATTACHMENT_HEADER, a.clone());
        }
        Ok(req)
    }
}

type Client = FlightServiceClient<InterceptedService<Channel, Headers>>;

/// One worker's address and a client for it; cheap to clone into the calls' futures.
#[derive(Clone)]
struct Link {
    id: WorkerId,
    address: String,
    client: Client,
    /// Bounds the chunk fetches in flight from this worker (see [`FETCHES_IN_FLIGHT`]).
    fetches: Arc<tokio::sync::Semaphore>,
}

/// How many chunks are fetched from one worker at a time. A task's fetches start together, and
/// a thousand streams at once on one HTTP/2 connection had the sender encode and the receiver
/// assemble a thousand messages side by side, each in fresh memory; a few at a time reuse it
/// (1000 chunks of 1 MiB: 1.49-1.57 GB/s median at 8, 1.23-1.51 unbounded; 4 and 32 were
/// slower than 8).
const FETCHES_IN_FLIGHT: usize = 8;

fn endpoint(address: &str, o: &ClientOptions) -> Result<Endpoint, EngineError> {
    let scheme = if o.tls_ca.is_some() { "https" } else { "http" };
    let bad = |m: String| EngineError::Remote {
        peer: format!("worker {address}"),
        message: m,
    };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| bad(format!("not an address (HOST:PORT): {e}")))?
        .connect_timeout(o.connect_timeout)
        .tcp_nodelay(true)
        // Chunks are large: windows that let a fetch run without waiting for window updates,
        // and frames of up to 1 MiB instead of 16 KiB (the most the other side may send).
        .initial_stream_window_size(protocol::STREAM_WINDOW)
        .initial_connection_window_size(protocol::CONNECTION_WINDOW)
        .max_frame_size(protocol::MAX_FRAME)
        // A peer that vanishes without closing the connection (a machine that died, a network
        // cut) fails every call on it within the keepalive timeout, long calls included.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(ca) = &o.tls_ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(d) = &o.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| bad(format!("TLS configuration: {}", chain(&e))))?;
    }
    Ok(ep)
}

fn header(value: &str) -> Result<MetadataValue<Ascii>, EngineError> {
    value.parse().map_err(|_| EngineError::Remote {
        peer: "token".into(),
        message: "the token must be printable ASCII".into(),
    })
}

fn client(
    channel: Channel,
    token: Option<&str>,
    attachment: Option<u64>,
) -> Result<Client, EngineError> {
    let headers = Headers {
        token: token.map(|t| header(&format!("Bearer {t}"))).transpose()?,
        attachment: attachment.map(|a| header(&a.to_string())).transpose()?,
    };
    Ok(FlightServiceClient::with_interceptor(channel, headers)
        .max_decoding_message_size(protocol::MAX_MESSAGE)
        .max_encoding_message_size(protocol::MAX_MESSAGE))
}

impl Link {
    fn new(id: WorkerId, address: String, client: Client) -> Link {
        Link {
            id,
            address,
            client,
            fetches: Arc::new(tokio::sync::Semaphore::new(FETCHES_IN_FLIGHT)),
        }
    }

    fn error(&self, message: String) -> EngineError {
        EngineError::Remote {
            peer: format!("{} at {}", self.id, self.address),
            message,
        }
    }

    /// A call's failure. One the transport reports as `Unavailable` (the connection refused or
    /// reset, or the keep-alive unanswered) means the worker cannot be reached: it is lost as
    /// far as this caller can tell, whether or not the driver's heartbeat has said so yet.
    fn failed(&self, what: &str, status: &Status) -> EngineError {
        if status.code() == tonic::Code::Unavailable {
            EngineError::WorkerLost {
                worker: self.id,
                reason: format!(
                    "unreachable at {}: {what}: {}",
                    self.address,
                    describe(status)
                ),
            }
        } else {
            self.error(format!("{what}: {}", describe(status)))
        }
    }

    async fn action(&self, kind: &str, body: Vec<u8>) -> Result<Bytes, Status> {
        let mut client = self.client.clone();
        let response = client
            .do_action(Request::new(Action {
                r#type: kind.to_string(),
                body: body.into(),
            }))
            .await?;
        let mut results = response.into_inner();
        Ok(results.message().await?.map(|r| r.body).unwrap_or_default())
    }

    /// A control call that must answer within `limit`.
    async fn control(
        &self,
        kind: &str,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<Bytes, EngineError> {
        match tokio::time::timeout(limit, self.action(kind, body)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(status)) if refused(&status) => Err(EngineError::WorkerLost {
                worker: self.id,
                reason: format!("{}: {}", self.address, describe(&status)),
            }),
            Ok(Err(status)) => Err(self.error(describe(&status))),
            Err(_) => Err(self.error(format!("no answer to {kind} within {limit:?}"))),
        }
    }

    async fn status(&self, limit: Duration) -> Result<StatusReply, EngineError> {
        let bytes = self.control(action::STATUS, Vec::new(), limit).await?;
        protocol::decode(&bytes, "status")
    }

    /// [`Link::status`], reading the worker's clock into `clock` on the way.
    async fn status_reading_clock(
        &self,
        limit: Duration,
        clock: &ClockOffset,
    ) -> Result<StatusReply, EngineError> {
        let sent_us = dirk_engine::eventlog::now_us();
        let reply = self.status(limit).await?;
        clock.observe(sent_us, dirk_engine::eventlog::now_us(), reply.clock_us);
        Ok(reply)
    }

    async fn fetch(&self, id: ChunkId) -> Result<Chunk, EngineError> {
        // Never closed, so acquiring only waits.
        let _turn = self
            .fetches
            .acquire()
            .await
            .expect("the fetch semaphore is never closed");
        let mut client = self.client.clone();
        let ticket = Ticket {
            ticket: protocol::encode(&Some(id)).into(),
        };
        let response = client
            .do_get(Request::new(ticket))
            .await
            .map_err(|s| self.failed(&format!("fetching {id}"), &s))?;
        let data = response
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        // Validated like any input: a peer is named by the driver, and the network between
        // may carry no TLS, so nothing decoded from it is trusted to be well formed.
        let decoder = FlightDataDecoder::new(data);
        let mut decoded = protocol::ChunkReader::new(FlightRecordBatchStream::new(decoder));
        let mut batches = Vec::new();
        while let Some(batch) = decoded.next().await {
            batches.push(batch.map_err(|e| match e {
                FlightError::Tonic(s) => self.failed(&format!("fetching {id}"), &s),
                other => self.error(format!("fetching {id}: {}", flight(other))),
            })?);
        }
        let schema = decoded
            .schema()
            .ok_or_else(|| self.error(format!("fetching {id}: the stream carried no schema")))?;
        Ok(Chunk::new(schema, batches))
    }

    async fn store(
        &self,
        id: Option<ChunkId>,
        chunk: Arc<Chunk>,
    ) -> Result<ChunkMeta, EngineError> {
        let header = PutHeader {
            chunk: id,
            rows: chunk.rows(),
        };
        // An encoding failure ends the stream early; the worker then sees fewer rows than the
        // header announced and keeps nothing.
        let failed: Arc<Mutex<Option<FlightError>>> = Arc::default();
        let failed_in_stream = failed.clone();
        let data = protocol::encode_chunk(
            chunk.schema().clone(),
            chunk.batches(),
            Some(FlightDescriptor::new_cmd(protocol::encode(&header))),
        )
        .take_while(move |r| {
            if let Err(e) = r {
                *failed_in_stream.lock() = Some(FlightError::ExternalError(e.to_string().into()));
            }
            future::ready(r.is_ok())
        })
        .filter_map(|r| future::ready(r.ok()));
        let mut client = self.client.clone();
        let response = client.do_put(Request::new(data)).await;
        if let Some(e) = failed.lock().take() {
            return Err(self.error(format!("sending a chunk: {}", flight(e))));
        }
        let mut results = response
            .map_err(|s| self.error(format!("sending a chunk: {}", describe(&s))))?
            .into_inner();
        let result = results
            .message()
            .await
            .map_err(|s| self.error(format!("sending a chunk: {}", describe(&s))))?
            .ok_or_else(|| self.error("sending a chunk: no answer".into()))?;
        protocol::decode(&result.app_metadata, "chunk metadata")
    }
}

/// Status calls made right after `hello` to read a worker's clock.
const CLOCK_SAMPLES_AT_CONNECT: usize = 3;

/// A worker in another process, reached over Arrow Flight.
pub struct RemoteWorker {
    link: Link,
    options: ClientOptions,
    processors: Vec<(ProcessorKind, usize)>,
    /// Puts the worker's clock readings on this process's timeline.
    clock: Arc<ClockOffset>,
    memory_limit: Option<u64>,
    attachment: u64,
    last_status: Arc<Mutex<WorkerStatus>>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The driver's link ends the attachment when dropped; a worker's link to a peer does not.
    owns_attachment: bool,
}

impl RemoteWorker {
    /// The worker process's whole status answer (its attachments, memory limit and clock as
    /// well as this attachment's tasks and chunks). Blocks: call it off the async runtime.
    pub fn status_reply(&self) -> Result<StatusReply, EngineError> {
        let link = self.link.clone();
        let limit = self.options.connect_timeout;
        block(async move { link.status(limit).await })
    }

    /// Starts fetching chunk `id` on the client runtime; the caller waits when it needs it.
    fn fetch_in_background(&self, id: ChunkId) -> PendingChunk {
        let link = self.link.clone();
        PendingChunk::new(start(async move { link.fetch(id).await.map(Arc::new) }))
    }

    /// Attaches to the worker at `address` as worker `id` of this driver.
    pub async fn connect(
        address: &str,
        id: WorkerId,
        options: &ClientOptions,
    ) -> Result<RemoteWorker, EngineError> {
        Self::connect_with_protocol(address, id, options, PROTOCOL_VERSION).await
    }

    /// [`RemoteWorker::connect`], claiming to speak protocol `protocol`: for tests of the
    /// version check.
    #[doc(hidden)]
    pub async fn connect_with_protocol(
        address: &str,
        id: WorkerId,
        options: &ClientOptions,
        protocol: u32,
    ) -> Result<RemoteWorker, EngineError> {
        let unreachable = |message: String| EngineError::Remote {
            peer: format!("worker {address}"),
            message,
        };
        let channel = endpoint(address, options)?
            .connect()
            .await
            .map_err(|e| unreachable(format!("cannot connect: {}", chain(&e))))?;
        let hello_link = Link::new(
            id,
            address.to_string(),
            client(channel.clone(), options.token.as_deref(), None)?,
        );
        let sent_us = dirk_engine::eventlog::now_us();
        let answer = hello_link
            .control(
                action::HELLO,
                protocol::encode(&Hello {
                    protocol,
                    worker: id,
                }),
                options.connect_timeout,
            )
            .await
            .map_err(|e| match e {
                EngineError::Remote { message, .. } => unreachable(message),
                other => other,
            })?;
        let received_us = dirk_engine::eventlog::now_us();
        let reply: HelloReply = protocol::decode(&answer, "hello reply")?;
        if reply.protocol != protocol {
            return Err(unreachable(format!(
                "protocol version mismatch: this driver speaks Dirk protocol {protocol}, the worker speaks {}",
                reply.protocol
            )));
        }
        let link = Link::new(
            id,
            address.to_string(),
            client(channel, options.token.as_deref(), Some(reply.attachment))?,
        );
        let mut worker = Self::from_link(link, options.clone(), reply.attachment, true);
        worker.processors = reply.processors;
        worker.clock.observe(sent_us, received_us, reply.clock_us);
        // The hello opened the connection; calls on the open connection read the clock closer.
        for _ in 0..CLOCK_SAMPLES_AT_CONNECT {
            worker
                .link
                .status_reading_clock(options.connect_timeout, &worker.clock)
                .await?;
        }
        worker.memory_limit = reply.memory_limit;
        Ok(worker)
    }

    /// A worker's client for a peer of the same driver: connects on first use.
    pub(crate) fn peer(peer: Peer, options: ClientOptions) -> Result<RemoteWorker, EngineError> {
        let channel = endpoint(&peer.address, &options)?.connect_lazy();
        let link = Link::new(
            peer.worker,
            peer.address,
            client(channel, options.token.as_deref(), Some(peer.attachment))?,
        );
        Ok(Self::from_link(link, options, peer.attachment, false))
    }

    /// A worker reached through `link`, its facts from `hello` not yet filled in.
    fn from_link(
        link: Link,
        options: ClientOptions,
        attachment: u64,
        owns_attachment: bool,
    ) -> RemoteWorker {
        let status = WorkerStatus {
            id: link.id,
            chunks: 0,
            bytes: 0,
            running: 0,
            finished: 0,
            memory: Default::default(),
        };
        RemoteWorker {
            link,
            options,
            processors: Vec::new(),
            clock: Arc::default(),
            memory_limit: None,
            attachment,
            last_status: Arc::new(Mutex::new(status)),
            heartbeat: Mutex::new(None),
            owns_attachment,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> &str {
        &self.link.address
    }

    /// The memory limit the worker was started with.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    fn peer_info(&self) -> Peer {
        Peer {
            worker: self.link.id,
            address: self.link.address.clone(),
            attachment: self.attachment,
        }
    }
}

/// Attaches to every worker in `addresses` (worker `i` gets id `i`) and tells each where the
/// others are, so they fetch inputs from each other directly. Fails, naming the worker, if one
/// cannot be reached, refuses the token, or speaks another protocol version.
pub async fn connect_cluster(
    addresses: &[String],
    options: &ClientOptions,
) -> Result<Vec<Arc<RemoteWorker>>, EngineError> {
    let attempts = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| RemoteWorker::connect(a, WorkerId(i as u32), options));
    let workers: Vec<Arc<RemoteWorker>> = future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.map(Arc::new))
        .collect::<Result<_, _>>()?;
    let peers: Vec<Peer> = workers.iter().map(|w| w.peer_info()).collect();
    let body = protocol::encode(&peers);
    for w in &workers {
        w.link
            .control(action::PEERS, body.clone(), options.connect_timeout)
            .await?;
    }
    Ok(workers)
}

/// Connects to one more worker, as `id`, while `existing` run: the new worker learns every
/// peer, and each existing worker learns the new one (one that does not answer is skipped: the
/// driver's heartbeat declares it lost).
pub async fn join_worker(
    address: &str,
    id: WorkerId,
    existing: &[Arc<RemoteWorker>],
    options: &ClientOptions,
) -> Result<Arc<RemoteWorker>, EngineError> {
    let joined = Arc::new(RemoteWorker::connect(address, id, options).await?);
    let mut peers: Vec<Peer> = existing.iter().map(|w| w.peer_info()).collect();
    peers.push(joined.peer_info());
    joined
        .link
        .control(
            action::PEERS,
            protocol::encode(&peers),
            options.connect_timeout,
        )
        .await?;
    let newcomer = protocol::encode(&vec![joined.peer_info()]);
    for w in existing {
        let _ = w
            .link
            .control(action::PEERS, newcomer.clone(), options.connect_timeout)
            .await;
    }
    Ok(joined)
}

/// [`connect_cluster`] from synchronous code.
pub fn connect_cluster_blocking(
    addresses: &[String],
    options: &ClientOptions,
) -> Result<Vec<Arc<RemoteWorker>>, EngineError> {
    let addresses = addresses.to_vec();
    let options = options.clone();
    block(async move { connect_cluster(&addresses, &options).await })
}

impl Worker for RemoteWorker {
    fn id(&self) -> WorkerId {
        self.link.id
    }

    fn processors(&self) -> Vec<(ProcessorKind, usize)> {
        self.processors.clone()
    }

    fn run_task(&self, assignment: TaskAssignment, sink: ReportSink) {
        let link = self.link.clone();
        let clock = self.clock.clone();
        runtime().spawn(async move {
            let task = assignment.task;
            let processor = assignment.processor;
            let started = dirk_engine::eventlog::now_us();
            let outcome = link
                .action(action::RUN, protocol::encode(&assignment))
                .await
                .map_err(|s| describe(&s))
                .and_then(|bytes| {
                    protocol::decode::<TaskReport>(&bytes, "task report").map_err(|e| e.to_string())
                });
            let report = match outcome {
                Ok(mut r) => {
                    r.started_us = clock.to_local(r.started_us);
                    r.finished_us = clock.to_local(r.finished_us);
                    r
                }
                Err(message) => {
                    // The call itself failed: the worker is gone or no longer knows this driver.
                    let reason = format!("{}: {message}", link.address);
                    let _ = sink.worker_lost(link.id, reason.clone());
                    let now = dirk_engine::eventlog::now_us();
                    TaskReport {
                        task,
                        worker: link.id,
                        processor,
                        started_us: started,
                        finished_us: now,
                        rows_in: 0,
                        bytes_in: 0,
                        fetch_wait_us: 0,
                        cpu_us: 0,
                        transfers: Vec::new(),
                        result: Err(EngineError::WorkerLost {
                            worker: link.id,
                            reason,
                        }),
                    }
                }
            };
            sink.report(report);
        });
    }

    fn cancel_task(&self, task: TaskId) {
        let link = self.link.clone();
        let limit = self.options.connect_timeout;
        runtime().spawn(async move {
            let _ = link
                .control(action::CANCEL, protocol::encode(&task), limit)
                .await;
        });
    }

    fn fetch_chunk(&self, id: ChunkId) -> Result<Arc<Chunk>, EngineError> {
        self.fetch_in_background(id).wait()
    }

    fn start_fetch(&self, id: ChunkId) -> Option<PendingChunk> {
        Some(self.fetch_in_background(id))
    }

    fn store_chunk(
        &self,
        id: Option<ChunkId>,
        chunk: Arc<Chunk>,
    ) -> Result<ChunkMeta, EngineError> {
        let link = self.link.clone();
        block(async move { link.store(id, chunk).await })
    }

    fn free_chunks(&self, ids: &[ChunkId]) {
        let link = self.link.clone();
        let body = protocol::encode(&ids);
        let limit = self.options.connect_timeout;
        runtime().spawn(async move {
            let _ = link.control(action::FREE, body, limit).await;
        });
    }

    fn status(&self) -> WorkerStatus {
        let link = self.link.clone();
        let limit = self.options.connect_timeout;
        let answer = block(async move { link.status(limit).await });
        let mut last = self.last_status.lock();
        if let Ok(reply) = answer {
            *last = reply.status;
        }
        last.clone()
    }

    fn attached(&self, sink: ReportSink) {
        let link = self.link.clone();
        let options = self.options.clone();
        let last_status = self.last_status.clone();
        let clock = self.clock.clone();
        let beat = runtime().spawn(async move {
            let mut last_answer = Instant::now();
            let mut ticks = tokio::time::interval(options.heartbeat);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let limit = options.lost_after.min(options.connect_timeout);
                let problem = match link.status_reading_clock(limit, &clock).await {
                    Ok(reply) => {
                        *last_status.lock() = reply.status;
                        last_answer = Instant::now();
                        continue;
                    }
                    Err(e) => e,
                };
                // A process that is gone refuses the connection: lost at once, where a hung
                // one gets `lost_after` to answer.
                let gone = matches!(problem, EngineError::WorkerLost { .. });
                let problem = problem.to_string();
                let forgotten = problem.contains("unknown attachment");
                if gone || forgotten || last_answer.elapsed() >= options.lost_after {
                    let reason = if gone {
                        format!("{} refuses connections: its process is gone", link.address)
                    } else {
                        format!(
                            "no heartbeat answer for {:.1}s ({problem})",
                            last_answer.elapsed().as_secs_f64()
                        )
                    };
                    let _ = sink.worker_lost(link.id, reason);
                    return;
                }
            }
        });
        if let Some(old) = self.heartbeat.lock().replace(beat) {
            old.abort();
        }
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        if let Some(beat) = self.heartbeat.lock().take() {
            beat.abort();
        }
        if self.owns_attachment {
            // Best effort: a worker also drops an attachment whose driver has gone silent.
            let link = self.link.clone();
            runtime().spawn(async move {
                let _ = link
                    .control(action::GOODBYE, Vec::new(), Duration::from_secs(2))
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClockOffset;

    #[test]
    fn the_clock_offset_comes_from_the_quickest_round_trip() {
        let clock = ClockOffset::default();
        assert_eq!(clock.to_local(1_000), 1_000, "no reading: no offset");
        // The worker's clock runs 500 µs behind. A slow call (opening the connection) reads it
        // 4 ms after sending and 6 ms before answering; the midpoint is 1 ms off.
        clock.observe(10_000, 20_000, 13_500);
        assert_eq!(clock.to_local(13_500), 15_000);
        // A quick call reads it within 100 µs and replaces the estimate.
        clock.observe(30_000, 30_100, 29_550);
        assert_eq!(clock.to_local(29_550), 30_050);
        // A slower call afterwards does not.
        clock.observe(40_000, 45_000, 44_000);
        assert_eq!(clock.to_local(29_550), 30_050);
    }
}
