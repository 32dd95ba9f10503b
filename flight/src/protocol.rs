//! What drivers and workers say to each other, on top of Arrow Flight.
//!
//! Data moves as Flight streams: `do_get` with a ticket naming a chunk (`Option<ChunkId>`)
//! returns its batches, `do_put` whose descriptor command names the chunk (or asks for a fresh
//! id) and its row count stores one.
//! Control messages are Flight actions whose bodies are `postcard`-encoded engine types:
//!
//! | action          | body                 | reply                 |
//! |-----------------|----------------------|-----------------------|
//! | `dirk.hello`    | [`Hello`]            | [`HelloReply`]        |
//! | `dirk.peers`    | `Vec<Peer>`          | nothing               |
//! | `dirk.run`      | `TaskAssignment`     | `TaskReport`, when the task ends |
//! | `dirk.cancel`   | `TaskId`             | nothing               |
//! | `dirk.free`     | `Vec<ChunkId>`       | nothing               |
//! | `dirk.status`   | nothing              | [`StatusReply`]       |
//! | `dirk.goodbye`  | nothing              | nothing               |
//!
//! Every call carries the shared token (`authorization: Bearer …`); every call after `hello`
//! carries the attachment key the worker handed out (`dirk-attachment`), because one worker
//! process serves several drivers (or several sessions of one driver) at once, each with its own
//! chunk store and worker id.

use dirk_engine::{ChunkId, EngineError, ProcessorKind, WorkerId, WorkerStatus};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped whenever a message changes shape. A driver and a worker of different versions refuse
/// each other at `hello`, with a message that names both versions.
pub const PROTOCOL_VERSION: u32 = 5;

/// The metadata key that carries the token.
pub const TOKEN_HEADER: &str = "authorization";
/// The metadata key that carries the attachment key.
pub const ATTACHMENT_HEADER: &str = "dirk-attachment";
/// The environment variable the shell and `dirk worker` read the token from.
pub const TOKEN_ENV: &str = "DIRK_TOKEN";

/// The token to use: `given` (a `--token` flag), else [`TOKEN_ENV`], else none. The one place
/// the token is read from the environment. An empty token is an error, not "no token".
pub fn resolve_token(given: Option<String>) -> Result<Option<String>, EngineError> {
    let token = given.or_else(|| std::env::var(TOKEN_ENV).ok());
    if let Some(t) = &token {
        check_not_empty(t)?;
    }
    Ok(token)
}

/// An error for an empty (or all-blank) token: a mistake, never a way to turn checks off.
pub(crate) fn check_not_empty(token: &str) -> Result<(), EngineError> {
    if token.trim().is_empty() {
        return Err(EngineError::failed(
            dirk_engine::ErrorKind::User,
            format!("the token is empty (--token or {TOKEN_ENV}): give a secret, or none"),
        ));
    }
    Ok(())
}

/// Action names.
pub(crate) mod action {
    pub(crate) const HELLO: &str = "dirk.hello";
    pub(crate) const PEERS: &str = "dirk.peers";
    pub(crate) const RUN: &str = "dirk.run";
    pub(crate) const CANCEL: &str = "dirk.cancel";
    pub(crate) const FREE: &str = "dirk.free";
    pub(crate) const STATUS: &str = "dirk.status";
    pub(crate) const GOODBYE: &str = "dirk.goodbye";
}

/// A driver attaching to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The driver's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The id the driver gives this worker; chunk ids the worker mints carry it.
    pub worker: WorkerId,
}

/// A worker's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The key to send with every later call of this attachment.
    pub attachment: u64,
    /// Its processors and their slots.
    pub processors: Vec<(ProcessorKind, usize)>,
    /// The memory limit it was started with, if any.
    pub memory_limit: Option<u64>,
    /// Its wall clock (µs since the Unix epoch) when it answered, to put its task times on the
    /// driver's timeline.
    pub clock_us: u64,
    /// The Dirk release it runs.
    pub release: String,
}

/// Another worker of the same driver, as a worker needs to know it to fetch chunks from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    /// Its id in the driver's numbering.
    pub worker: WorkerId,
    /// Where it listens.
    pub address: String,
    /// Its attachment key for this driver.
    pub attachment: u64,
}

/// A worker's status, with the limits it was started with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// Chunks, bytes and tasks of this attachment.
    pub status: WorkerStatus,
    /// The memory limit it was started with, if any.
    pub memory_limit: Option<u64>,
    /// Attachments (drivers or sessions) it serves now.
    pub attachments: usize,
    /// Its wall clock (µs since the Unix epoch) when it answered: each heartbeat refines the
    /// driver's estimate of the offset between the two clocks.
    pub clock_us: u64,
}

/// The next batch of a stream of Arrow data from the network. Malformed data is an error, never
/// a panic: arrow's IPC reader slices buffers by the lengths a message claims before it
/// validates them, and panics where they do not fit.
pub(crate) async fn next_batch(
    decoded: &mut arrow_flight::decode::FlightRecordBatchStream,
) -> Option<Result<arrow::array::RecordBatch, arrow_flight::error::FlightError>> {
    use futures::{FutureExt, StreamExt};
    match std::panic::AssertUnwindSafe(decoded.next())
        .catch_unwind()
        .await
    {
        Ok(next) => next,
        Err(_) => Some(Err(arrow_flight::error::FlightError::DecodeError(
            "malformed Arrow data: a buffer is shorter than its message says".into(),
        ))),
    }
}

/// Encodes a message body.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails for types serde cannot describe, which ours are not.
    postcard::to_stdvec(value).expect("protocol messages always encode")
}

/// Decodes a message body.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Malformed {
        peer: "protocol".into(),
        what: what.into(),
        message: e.to_string(),
    })
}

/// The descriptor command of `do_put`: which chunk (none: the worker mints an id) and how many
/// rows it has, so a stream cut short is refused instead of stored as half a chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutHeader {
    /// The chunk's id, or none for the worker to mint one.
    pub chunk: Option<ChunkId>,
    /// Its rows.
    pub rows: u64,
}

/// gRPC messages may be large: a chunk's batches are cut into 2 MiB Flight messages, but one
/// wide row group or a big task fragment can exceed tonic's 4 MiB default.
pub(crate) const MAX_MESSAGE: usize = 256 << 20;
/// HTTP/2 flow-control window of one call (one chunk moving), in bytes: chunks are large, and a
/// fetch should not stop to wait for window updates.
pub(crate) const STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of one connection (all chunks moving between two processes).
pub(crate) const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame a process accepts (the most its peer may send at once), in bytes;
/// HTTP/2's default is 16 KiB.
pub(crate) const MAX_FRAME: u32 = 1 << 20;

/// Bytes of values one Flight message carries, about (arrow-flight's default message size).
const MESSAGE_BYTES: usize = 2 << 20;

/// The Flight messages that carry a chunk: its schema, then its batches in pieces of about
/// [`MESSAGE_BYTES`] ([`dirk_engine::split_for_transfer`]: view columns compacted, as IPC sends
/// a column's buffers whole, also a slice's; a task's outputs already are compact, a chunk put
/// from elsewhere or a table partition cut into pieces is not), dictionaries sent as
/// dictionaries so the chunk arrives with the schema the plan reading it expects. `descriptor`
/// goes with the first message.
///
/// arrow-flight 59 writes a `LargeList` column into the schema message as a `List`
/// (apache/arrow-rs#10291, fixed upstream after 59.3.2) and drops a union field's metadata; the
/// receiver then reads 64-bit offsets as 32-bit ones. So the schema message is written here from
/// the chunk's own schema. The dictionary ids agree with the encoder's: both number the
/// dictionaries in the same depth-first order.
pub(crate) fn encode_chunk(
    schema: arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
    descriptor: Option<arrow_flight::FlightDescriptor>,
) -> impl futures::Stream<Item = Result<arrow_flight::FlightData, arrow_flight::error::FlightError>>
{
    use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
    use futures::TryStreamExt as _;
    let schema_message: arrow_flight::FlightData =
        arrow_flight::SchemaAsIpc::new(&schema, &arrow::ipc::writer::IpcWriteOptions::default())
            .into();
    let batches: Vec<_> = batches
        .iter()
        .flat_map(|b| dirk_engine::split_for_transfer(b, MESSAGE_BYTES))
        .map(Ok)
        .collect();
    let mut first = true;
    FlightDataEncoderBuilder::new()
        // The pieces are cut above; the encoder's own cut measures a slice by the buffers it
        // shares with the whole batch, and would cut every piece again.
        .with_max_flight_data_size(usize::MAX)
        .with_dictionary_handling(DictionaryHandling::Resend)
        .with_schema(schema)
        .with_flight_descriptor(descriptor)
        .build(futures::stream::iter(batches))
        .map_ok(move |mut message| {
            // With the schema given up front, the encoder's first message is the schema's.
            if std::mem::take(&mut first) {
                message.data_header = schema_message.data_header.clone();
            }
            message
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, RecordBatch, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::StreamExt;
    use std::sync::Arc;

    /// Encodes `batch` as one chunk; returns the messages' body bytes, how many messages carried
    /// rows, and the batches decoded from them.
    fn round_trip(batch: &RecordBatch) -> (usize, usize, Vec<RecordBatch>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let messages: Vec<arrow_flight::FlightData> =
                encode_chunk(batch.schema(), std::slice::from_ref(batch), None)
                    .map(|m| m.expect("encodes"))
                    .collect()
                    .await;
            let body: usize = messages.iter().map(|m| m.data_body.len()).sum();
            let decoded: Vec<RecordBatch> =
                arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                    futures::stream::iter(messages.into_iter().map(Ok)),
                )
                .map(|b| b.expect("decodes"))
                .collect()
                .await;
            (body, decoded.len(), decoded)
        })
    }

    fn strings(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, true)]));
        let values: StringViewArray = (0..rows)
            .map(|i| (i % 7 != 0).then(|| format!("{i:030}")))
            .collect();
        RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("a batch")
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), batches).expect("one schema")
    }

    #[test]
    fn a_big_batch_of_strings_is_sent_once_in_pieces() {
        // One batch well over a Flight message, as a table partition is: 200,000 rows, 5.1 MB
        // of strings of 30 bytes (every seventh row null) and 3.2 MB of views.
        let batch = strings(200_000);
        let (sent, pieces, decoded) = round_trip(&batch);
        // Each piece used to carry every string of the batch: 33 MB went for these 8.4 MB.
        assert!(sent < 9_500_000, "{sent} bytes sent");
        assert!((4..=6).contains(&pieces), "{pieces} pieces");
        assert_eq!(concat(&decoded), batch);
    }

    #[test]
    fn a_batch_over_one_message_by_a_little_is_not_sent_twice() {
        // Two pieces: each holds half the strings, below the rule that compacts a task's output
        // (data buffers over twice the bytes used), and would still carry all of them.
        let batch = strings(60_000);
        let (sent, pieces, decoded) = round_trip(&batch);
        assert_eq!(pieces, 2);
        assert!(sent < 2_800_000, "{sent} bytes sent");
        assert_eq!(concat(&decoded), batch);
    }

    #[test]
    fn a_big_batch_of_integers_goes_in_messages_of_about_two_mib() {
        // 32 MiB of values; a slice must not be measured by the buffer it shares (which would
        // cut each of 16 pieces into 16 again).
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let values = Int64Array::from_iter_values(0..(4 << 20));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("a batch");
        let (sent, pieces, decoded) = round_trip(&batch);
        assert_eq!(pieces, 16);
        assert!(sent < (32 << 20) + 4096, "{sent} bytes sent");
        let back = concat(&decoded);
        assert_eq!(back.num_rows(), batch.num_rows());
        assert_eq!(back.column(0).to_data(), batch.column(0).to_data());
    }
}
