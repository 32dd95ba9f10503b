//! Chunks: Arrow data held by one worker's chunk store, and the references that name them.

use crate::ids::{ChunkId, WorkerId};
use arrow::array::{GenericByteViewArray, RecordBatch};
use arrow::datatypes::{ByteViewType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The data of one chunk: a schema and zero or more record batches of that schema.
///
/// Cloning is cheap (Arrow buffers are reference counted). A kernel that holds the only reference
/// to a chunk's buffers may mutate them in place.
#[derive(Debug, Clone)]
pub struct Chunk {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Chunk {
    /// A chunk of `batches`, all of which must have `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Chunk { schema, batches }
    }

    /// A chunk holding one batch.
    pub fn from_batch(batch: RecordBatch) -> Self {
        Chunk {
            schema: batch.schema(),
            batches: vec![batch],
        }
    }

    /// A chunk with no columns and no rows: the output of a task that only has effects.
    pub fn empty() -> Self {
        Chunk {
            schema: Arc::new(Schema::empty()),
            batches: Vec::new(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batches.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// Mutable access to the batches, for kernels that update a chunk in place.
    pub fn batches_mut(&mut self) -> &mut Vec<RecordBatch> {
        &mut self.batches
    }

    /// Takes the batches out.
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }

    /// Total number of rows.
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// Bytes of the values the batches hold (slices count only their part of shared buffers):
    /// what moving the chunk to another worker carries.
    pub fn data_bytes(&self) -> u64 {
        self.batches
            .iter()
            .map(|b| batch_data_bytes(b) as u64)
            .sum()
    }

    /// Bytes of Arrow memory the batches hold: each underlying allocation counted once, whole,
    /// however many columns or slices share it (a batch decoded from one Flight message, or
    /// the parts of a split that keep their input's string data, share their buffers).
    pub fn bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0u64;
        for b in &self.batches {
            for c in b.columns() {
                add_buffers(&c.to_data(), &mut seen, &mut total);
            }
        }
        total
    }
}

fn add_buffers(
    data: &arrow::array::ArrayData,
    seen: &mut std::collections::HashSet<usize>,
    total: &mut u64,
) {
    let mut add = |b: &arrow::buffer::Buffer| {
        if seen.insert(b.data_ptr().as_ptr() as usize) {
            *total += b.capacity() as u64;
        }
    };
    for b in data.buffers() {
        add(b);
    }
    if let Some(n) = data.nulls() {
        add(n.buffer());
    }
    for child in data.child_data() {
        add_buffers(child, seen, total);
    }
}

/// Bytes of the values `batch` holds ([`column_data_bytes`] of each column).
fn batch_data_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(column_data_bytes).sum()
}

/// Bytes of the values `column` holds. A string or binary view column counts the views and only
/// the data bytes they point at: the hash split of a batch keeps every data buffer of its input
/// in each of its parts, and a transfer sends only what the views use (see
/// [`compact_view_columns`]), so counting whole buffers would price each part as the whole input.
fn column_data_bytes(column: &arrow::array::ArrayRef) -> usize {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    fn views<T: ByteViewType + ?Sized>(a: &GenericByteViewArray<T>) -> usize {
        a.len() * 16 + a.total_buffer_bytes_used() + a.nulls().map_or(0, |n| n.buffer().len())
    }
    match column.data_type() {
        DataType::Utf8View => views(column.as_string_view()),
        DataType::BinaryView => views(column.as_binary_view()),
        _ => column
            .to_data()
            .get_slice_memory_size()
            .unwrap_or_else(|_| column.get_array_memory_size()),
    }
}

/// `batch` with its string and binary *view* columns compacted where their data buffers hold
/// more than twice the bytes the views use. Rows sliced, taken or hash-split from a view column
/// keep every data buffer of their input: kept as is, each piece of a split holds (and a transfer
/// of it sends) the whole input's bytes, and a join that concatenates such pieces into its build
/// side copies those buffers once per piece. Task outputs and Flight transfers both go through
/// here. Other columns, and compact view columns, are shared, not copied.
pub fn compact_view_columns(batch: RecordBatch) -> RecordBatch {
    compact_views_holding_over(batch, 2)
}

/// `batch` cut into row ranges of about `max_bytes` of values each ([`Chunk::data_bytes`]), for
/// a transfer that sends each piece as one message. Arrow IPC writes a view column's data buffers
/// whole, also for a slice: each piece's view columns are compacted, or every piece would carry
/// the strings of the whole batch (a table partition is one batch: cut into 64 messages, it sent
/// its strings 64 times). A batch within `max_bytes` comes back as [`compact_view_columns`] leaves
/// it.
pub fn split_for_transfer(batch: &RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let pieces = batch_data_bytes(batch).div_ceil(max_bytes.max(1)).max(1);
    let rows = batch.num_rows();
    if pieces == 1 || rows < 2 {
        return vec![compact_view_columns(batch.clone())];
    }
    let per_piece = rows.div_ceil(pieces);
    (0..rows)
        .step_by(per_piece)
        .map(|start| {
            let piece = batch.slice(start, per_piece.min(rows - start));
            compact_views_holding_over(piece, 1)
        })
        .collect()
}

/// Compacts the view columns whose data buffers hold more than `times` the bytes their views
/// use (and over 4 KiB more).
fn compact_views_holding_over(batch: RecordBatch, times: usize) -> RecordBatch {
    use arrow::array::{ArrayRef, AsArray};
    use arrow::datatypes::DataType;
    fn compacted<T: ByteViewType + ?Sized>(
        a: &GenericByteViewArray<T>,
        times: usize,
    ) -> Option<ArrayRef> {
        let held: usize = a.data_buffers().iter().map(|b| b.len()).sum();
        // `total_buffer_bytes_used` walks every view; most columns are ruled out by `held` alone.
        let wasteful = held > 4096 && held > times * a.total_buffer_bytes_used() + 4096;
        wasteful.then(|| Arc::new(a.gc()) as ArrayRef)
    }
    let compact = |column: &ArrayRef| match column.data_type() {
        DataType::Utf8View => compacted(column.as_string_view(), times),
        DataType::BinaryView => compacted(column.as_binary_view(), times),
        _ => None,
    };
    let compacted: Vec<Option<ArrayRef>> = batch.columns().iter().map(compact).collect();
    if compacted.iter().all(Option::is_none) {
        return batch;
    }
    let columns: Vec<ArrayRef> = compacted
        .into_iter()
        .zip(batch.columns())
        .map(|(new, old)| new.unwrap_or_else(|| Arc::clone(old)))
        .collect();
    // Same types, lengths and schema, so this cannot fail; keep the input if it somehow does.
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
}

/// Where a chunk's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemorySpace {
    /// Host memory of the owning worker.
    Host,
    /// An Arrow IPC file on the owning worker's disk.
    Spilled,
    /// Device memory of GPU `n` on the owning worker.
    Gpu(u32),
}

/// Serializable facts about a chunk, as workers report them to the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// The chunk.
    pub id: ChunkId,
    /// The worker whose store holds it.
    pub owner: WorkerId,
    /// Where on that worker.
    pub space: MemorySpace,
    /// Rows.
    pub rows: u64,
    /// Bytes of values, what moving it carries ([`Chunk::data_bytes`]).
    pub bytes: u64,
    /// Schema.
    pub schema: SchemaRef,
}

impl ChunkMeta {
    /// Describes `chunk` held by `owner` in host memory under `id`.
    pub fn describe(id: ChunkId, owner: WorkerId, chunk: &Chunk) -> Self {
        ChunkMeta {
            id,
            owner,
            space: MemorySpace::Host,
            rows: chunk.rows(),
            bytes: chunk.data_bytes(),
            schema: chunk.schema().clone(),
        }
    }
}

/// A reference to a chunk: what a task argument or a task's output names. It is a snapshot of the
/// chunk's metadata when the reference was made; the scheduler's directory is the authority on
/// where the chunk lives now.
pub type ChunkRef = ChunkMeta;

#[cfg(test)]
mod tests {
    use super::compact_view_columns;
    use arrow::array::{ArrayRef, AsArray, RecordBatch, StringViewArray, UInt32Array};
    use std::sync::Arc;

    fn held(b: &RecordBatch) -> usize {
        b.column(0)
            .as_string_view()
            .data_buffers()
            .iter()
            .map(|d| d.len())
            .sum()
    }

    /// A few rows taken from a large view column keep pointing into all of its data; compacted,
    /// they hold only the bytes those rows use, with the same values.
    #[test]
    fn view_columns_taken_from_a_large_one_are_compacted() {
        let big = StringViewArray::from_iter_values(
            (0..100_000).map(|i| format!("a long string, row number {i}")),
        );
        let few = arrow::compute::take(&big, &UInt32Array::from(vec![3, 99_999, 5]), None).unwrap();
        let batch = RecordBatch::try_from_iter([("s", few.clone() as ArrayRef)]).unwrap();
        assert!(held(&batch) > 1_000_000, "take shares the input's buffers");
        let compacted = compact_view_columns(batch);
        assert!(held(&compacted) < 1_000, "{} bytes held", held(&compacted));
        assert_eq!(compacted.column(0).as_ref(), few.as_ref());
    }

    /// A column whose buffers are mostly used, such as one half of a two-way split, is shared.
    #[test]
    fn view_columns_that_use_their_buffers_are_shared() {
        let big = StringViewArray::from_iter_values(
            (0..10_000).map(|i| format!("a long string, row number {i}")),
        );
        let half = arrow::compute::take(
            &big,
            &UInt32Array::from((0..10_000).step_by(2).collect::<Vec<u32>>()),
            None,
        )
        .unwrap();
        let batch = RecordBatch::try_from_iter([("s", half as ArrayRef)]).unwrap();
        let kept = compact_view_columns(batch.clone());
        assert_eq!(kept, batch);
        let (a, b) = (
            batch.column(0).as_string_view(),
            kept.column(0).as_string_view(),
        );
        assert_eq!(a.data_buffers()[0].as_ptr(), b.data_buffers()[0].as_ptr());
        let small = RecordBatch::try_from_iter([(
            "s",
            Arc::new(StringViewArray::from(vec!["x"])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(compact_view_columns(small.clone()), small);
    }
}
