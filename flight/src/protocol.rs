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
use std::sync::Arc;

/// Bumped whenever a message changes shape. A driver and a worker of different versions refuse
/// each other at `hello`, with a message that names both versions.
pub const PROTOCOL_VERSION: u32 = 6;

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

/// The field metadata key that marks a string column sent as offsets instead of views.
const SENT_AS_OFFSETS: &str = "dirk:utf8view";

/// A chunk's batches as they arrive off the network, validated, with their string columns
/// back in the types the chunk had ([`encode_chunk`] sends string views as offsets).
pub(crate) struct ChunkReader {
    decoded: arrow_flight::decode::FlightRecordBatchStream,
    /// The chunk's schema, once the stream's schema message has come.
    schema: Option<arrow::datatypes::SchemaRef>,
}

impl ChunkReader {
    pub(crate) fn new(decoded: arrow_flight::decode::FlightRecordBatchStream) -> ChunkReader {
        ChunkReader {
            decoded,
            schema: None,
        }
    }

    /// The next batch. Malformed data is an error, never a panic: arrow's IPC reader slices
    /// buffers by the lengths a message claims before it validates them, and panics where they
    /// do not fit.
    pub(crate) async fn next(
        &mut self,
    ) -> Option<Result<arrow::array::RecordBatch, arrow_flight::error::FlightError>> {
        use futures::StreamExt;
        let next = match dirk_engine::panics::catch_async(self.decoded.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Some(Err(arrow_flight::error::FlightError::DecodeError(
                    "malformed Arrow data: a buffer is shorter than its message says".into(),
                )))
            }
        };
        Some(next?.and_then(|batch| match self.schema() {
            Some(schema) => {
                from_wire(batch, schema).map_err(arrow_flight::error::FlightError::Arrow)
            }
            None => Err(arrow_flight::error::FlightError::DecodeError(
                "a batch before the stream's schema".into(),
            )),
        }))
    }

    /// The chunk's schema, once the stream has carried it.
    pub(crate) fn schema(&mut self) -> Option<arrow::datatypes::SchemaRef> {
        if self.schema.is_none() {
            self.schema = self.decoded.schema().map(chunk_schema);
        }
        self.schema.clone()
    }
}

/// `batch` with its `Utf8View` columns as `Utf8` (`LargeUtf8` where `large`), marked so the
/// receiver turns them back. Offsets are validated as one UTF-8 check of the whole values
/// buffer and a boundary check per string, views by one UTF-8 check per string, most of a
/// fetch's time for short strings; and an offset is 4 bytes where a view is 16.
fn to_wire(
    batch: &arrow::array::RecordBatch,
    wire: &arrow::datatypes::SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    cast_to(batch, wire.clone())
}

/// `batch` under `schema`, each column whose type differs cast to the field's type.
fn cast_to(
    batch: &arrow::array::RecordBatch,
    schema: arrow::datatypes::SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    arrow::array::RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// The schema a chunk is sent with: its top-level `Utf8View` fields as `Utf8`, or `LargeUtf8`
/// where one of `batches` holds more string bytes in the column than 32-bit offsets reach.
fn wire_schema(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> arrow::datatypes::SchemaRef {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Schema};
    if !schema
        .fields()
        .iter()
        .any(|f| f.data_type() == &DataType::Utf8View)
    {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            if field.data_type() != &DataType::Utf8View {
                return field.as_ref().clone();
            }
            let large = batches.iter().any(|b| {
                b.column(i).as_string_view_opt().is_some_and(|a| {
                    a.views().iter().map(|v| *v as u32 as usize).sum::<usize>() > i32::MAX as usize
                })
            });
            let mut metadata = field.metadata().clone();
            metadata.insert(SENT_AS_OFFSETS.into(), String::new());
            field
                .as_ref()
                .clone()
                .with_data_type(if large {
                    DataType::LargeUtf8
                } else {
                    DataType::Utf8
                })
                .with_metadata(metadata)
        })
        .collect();
    std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The chunk's own schema, from the one it was sent with.
fn chunk_schema(wire: &arrow::datatypes::SchemaRef) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    if !wire
        .fields()
        .iter()
        .any(|f| f.metadata().contains_key(SENT_AS_OFFSETS))
    {
        return wire.clone();
    }
    let fields: Vec<Field> = wire
        .fields()
        .iter()
        .map(|field| {
            let mut metadata = field.metadata().clone();
            if metadata.remove(SENT_AS_OFFSETS).is_none() {
                return field.as_ref().clone();
            }
            field
                .as_ref()
                .clone()
                .with_data_type(DataType::Utf8View)
                .with_metadata(metadata)
        })
        .collect();
    std::sync::Arc::new(Schema::new_with_metadata(fields, wire.metadata().clone()))
}

/// A batch as it arrived, in the chunk's schema: string offsets back to views, which point
/// into the arrived buffer (no copy).
fn from_wire(
    batch: arrow::array::RecordBatch,
    schema: arrow::datatypes::SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    if Arc::ptr_eq(&batch.schema(), &schema) || batch.schema() == schema {
        return Ok(batch);
    }
    cast_to(&batch, schema)
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
/// the schema the chunk is sent with (its own, string views as offsets: [`to_wire`]). The dictionary ids agree with the encoder's: both number the
/// dictionaries in the same depth-first order.
pub(crate) fn encode_chunk(
    schema: arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
    descriptor: Option<arrow_flight::FlightDescriptor>,
) -> impl futures::Stream<Item = Result<arrow_flight::FlightData, arrow_flight::error::FlightError>>
{
    use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
    use futures::TryStreamExt as _;
    let schema = wire_schema(&schema, batches);
    let schema_message: arrow_flight::FlightData =
        arrow_flight::SchemaAsIpc::new(&schema, &arrow::ipc::writer::IpcWriteOptions::default())
            .into();
    // Strings become offsets before the cut: slices of them are sent by the bytes they use.
    let batches: Vec<_> = batches
        .iter()
        .map(|b| to_wire(b, &schema))
        .flat_map(|b| match b {
            Ok(b) => dirk_engine::split_for_transfer(&b, MESSAGE_BYTES)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(e) => vec![Err(arrow_flight::error::FlightError::Arrow(e))],
        })
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
    use arrow::array::{Array, BinaryViewArray, Int64Array, RecordBatch, StringViewArray};
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
            let mut reader = ChunkReader::new(
                arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                    futures::stream::iter(messages.into_iter().map(Ok)),
                ),
            );
            let mut decoded = Vec::new();
            while let Some(b) = reader.next().await {
                decoded.push(b.expect("decodes"));
            }
            assert_eq!(reader.schema(), Some(batch.schema()));
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

    fn binary(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "b",
            DataType::BinaryView,
            true,
        )]));
        let values: BinaryViewArray = (0..rows)
            .map(|i| (i % 7 != 0).then(|| format!("{i:030}").into_bytes()))
            .collect();
        RecordBatch::try_new(schema, vec![Arc::new(values)]).expect("a batch")
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), batches).expect("one schema")
    }

    #[test]
    fn a_big_batch_of_strings_is_sent_once_in_pieces_as_offsets() {
        // One batch well over a Flight message, as a table partition is: 200,000 rows, 5.1 MB
        // of strings of 30 bytes (every seventh row null) and 3.2 MB of views. Sent as offsets,
        // 0.8 MB instead of the views, each string once: a piece of a view column used to carry
        // every string of the batch (33 MB went for these 8.4 MB).
        let batch = strings(200_000);
        let (sent, pieces, decoded) = round_trip(&batch);
        assert!(sent < 6_200_000, "{sent} bytes sent");
        assert!((3..=4).contains(&pieces), "{pieces} pieces");
        assert_eq!(concat(&decoded), batch);
    }

    #[test]
    fn a_binary_view_batch_over_one_message_by_a_little_is_not_sent_twice() {
        // Two pieces: each holds half the values, below the rule that compacts a task's output
        // (data buffers over twice the bytes used), and would still carry all of them.
        let batch = binary(60_000);
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
