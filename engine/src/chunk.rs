//! Chunks: Arrow data held by one worker's chunk store, and the references that name them.

use crate::error::{EngineError, Result};
use crate::ids::{ChunkId, WorkerId};
use crate::memory::{MemoryBudget, MemoryBudgetRef, Spill};
use arrow::array::{GenericByteViewArray, RecordBatch};
use arrow::datatypes::{ByteViewType, Schema, SchemaRef};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// One worker's chunks: in host memory, or written to its spill directory when its memory
/// budget ([`MemoryBudget`]) needs room, and read back when a task asks for them.
#[derive(Debug)]
pub struct ChunkStore {
    worker: WorkerId,
    next_seq: AtomicU64,
    inner: Arc<StoreInner>,
}

/// The chunks themselves, shared with the budget (which asks them to spill).
#[derive(Debug)]
struct StoreInner {
    worker: WorkerId,
    budget: MemoryBudgetRef,
    spill_dir: PathBuf,
    clock: AtomicU64,
    slots: RwLock<HashMap<ChunkId, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// The chunk, while it is in memory.
    chunk: Option<Arc<Chunk>>,
    /// Its spill file, once written (kept after a reload: the chunk is immutable in the store,
    /// so spilling it again costs no write).
    file: Option<Arc<SpillFile>>,
    /// Bytes of Arrow memory it holds when resident ([`Chunk::bytes`]).
    bytes: u64,
    last_used: AtomicU64,
}

/// A chunk's Arrow IPC file (LZ4-compressed), deleted when the chunk leaves the store.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file_bytes: u64,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a chunk is, as [`ChunkStore::spaces`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The chunk.
    pub id: ChunkId,
    /// In memory, or spilled.
    pub space: MemorySpace,
    /// Bytes it holds in memory when resident.
    pub bytes: u64,
    /// Bytes its spill file takes on disk (0 if never spilled).
    pub disk_bytes: u64,
}

impl ChunkStore {
    /// An empty store for `worker`, with no memory limit.
    pub fn new(worker: WorkerId) -> Self {
        Self::with_budget(
            worker,
            Arc::new(MemoryBudget::new(None)),
            std::env::temp_dir().join("dirk-spill"),
        )
    }

    /// An empty store for `worker` whose chunks count against `budget` and spill under
    /// `spill_dir` (in a directory of the store's own, removed with it).
    pub fn with_budget(worker: WorkerId, budget: MemoryBudgetRef, spill_dir: PathBuf) -> Self {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let dir = spill_dir.join(format!(
            "dirk-{}-{}-w{}",
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed),
            worker.0
        ));
        let inner = Arc::new(StoreInner {
            worker,
            budget: Arc::clone(&budget),
            spill_dir: dir,
            clock: AtomicU64::new(0),
            slots: RwLock::new(HashMap::new()),
        });
        let weak: std::sync::Weak<StoreInner> = Arc::downgrade(&inner);
        budget.add_spiller(weak);
        ChunkStore {
            worker,
            next_seq: AtomicU64::new(0),
            inner,
        }
    }

    /// The budget its chunks count against.
    pub fn budget(&self) -> &MemoryBudgetRef {
        &self.inner.budget
    }

    /// Mints a fresh chunk id for this worker.
    pub fn mint(&self) -> ChunkId {
        ChunkId::new(self.worker, self.next_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Stores `chunk` under a fresh id and describes it.
    pub fn insert(&self, chunk: Chunk) -> ChunkMeta {
        self.insert_with_id(self.mint(), Arc::new(chunk))
    }

    /// Stores `chunk` under `id`, replacing what was there. Older chunks spill if the budget
    /// needs room for it.
    pub fn insert_with_id(&self, id: ChunkId, chunk: Arc<Chunk>) -> ChunkMeta {
        let meta = ChunkMeta::describe(id, self.worker, &chunk);
        let bytes = chunk.bytes();
        let slot = Slot {
            chunk: Some(chunk),
            file: None,
            bytes,
            last_used: AtomicU64::new(self.inner.tick()),
        };
        self.inner.budget.add_chunk(bytes as usize);
        let old = self.inner.slots.write().insert(id, slot);
        if let Some(old) = old {
            self.inner.forget(&old);
        }
        self.inner.budget.make_room(0, Some(id));
        meta
    }

    /// A shared reference to a chunk, read back from its spill file if it was spilled.
    pub fn get(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        self.inner.get(id)
    }

    /// Removes a chunk and returns it (read back if it was spilled); the store no longer holds
    /// a reference.
    pub fn take(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        let chunk = self.inner.get(id)?;
        if let Some(slot) = self.inner.slots.write().remove(&id) {
            self.inner.forget(&slot);
        }
        Ok(chunk)
    }

    /// Removes chunks.
    pub fn remove(&self, ids: &[ChunkId]) {
        let removed: Vec<Slot> = {
            let mut map = self.inner.slots.write();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for slot in &removed {
            self.inner.forget(slot);
        }
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.inner.slots.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> u64 {
        self.inner
            .slots
            .read()
            .values()
            .filter(|s| s.chunk.is_some())
            .map(|s| s.bytes)
            .sum()
    }

    /// Bytes of spill files of chunks not in memory now.
    pub fn disk_bytes(&self) -> u64 {
        self.inner
            .slots
            .read()
            .values()
            .filter(|s| s.chunk.is_none())
            .filter_map(|s| s.file.as_ref().map(|f| f.file_bytes))
            .sum()
    }

    /// Where each chunk is now.
    pub fn spaces(&self) -> Vec<ChunkPlace> {
        let mut v: Vec<ChunkPlace> = self
            .inner
            .slots
            .read()
            .iter()
            .map(|(id, s)| ChunkPlace {
                id: *id,
                space: if s.chunk.is_some() {
                    MemorySpace::Host
                } else {
                    MemorySpace::Spilled
                },
                bytes: s.bytes,
                disk_bytes: s.file.as_ref().map_or(0, |f| f.file_bytes),
            })
            .collect();
        v.sort_by_key(|p| p.id);
        v
    }
}

impl Drop for ChunkStore {
    fn drop(&mut self) {
        // Spill files go with their slots; the store's directory after them.
        self.inner.slots.write().clear();
        let _ = std::fs::remove_dir(&self.inner.spill_dir);
    }
}

impl StoreInner {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Returns a slot's memory to the budget (its spill file is deleted when dropped).
    fn forget(&self, slot: &Slot) {
        if slot.chunk.is_some() {
            self.budget.remove_chunk(slot.bytes as usize);
        }
    }

    fn get(&self, id: ChunkId) -> Result<Arc<Chunk>> {
        let file = {
            let map = self.slots.read();
            let slot = map.get(&id).ok_or(EngineError::ChunkNotFound {
                chunk: id,
                worker: self.worker,
            })?;
            slot.last_used.store(self.tick(), Ordering::Relaxed);
            match (&slot.chunk, &slot.file) {
                (Some(chunk), _) => return Ok(Arc::clone(chunk)),
                (None, Some(file)) => Arc::clone(file),
                (None, None) => unreachable!("a slot holds its chunk or its file"),
            }
        };
        let chunk = Arc::new(
            read_spill_file(&file.path).map_err(|message| EngineError::Io {
                path: file.path.display().to_string(),
                message: format!("reading back spilled {id} on {}: {message}", self.worker),
            })?,
        );
        let bytes = {
            let mut map = self.slots.write();
            match map.get_mut(&id) {
                // Still the spilled chunk this file holds: it is resident again.
                Some(slot)
                    if slot.chunk.is_none()
                        && slot.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &file)) =>
                {
                    slot.chunk = Some(Arc::clone(&chunk));
                    slot.bytes
                }
                // Reloaded by another task meanwhile, replaced or removed: hand out what was read.
                _ => 0,
            }
        };
        if bytes > 0 {
            self.budget.reloaded(bytes);
            self.budget.add_chunk(bytes as usize);
            self.budget.make_room(0, Some(id));
        }
        Ok(chunk)
    }

    /// Picks the least recently used chunk in memory that no task holds, other than `keep`.
    fn victim(
        &self,
        keep: Option<ChunkId>,
    ) -> Option<(ChunkId, Arc<Chunk>, Option<Arc<SpillFile>>)> {
        let map = self.slots.read();
        map.iter()
            .filter(|(id, _)| Some(**id) != keep)
            .filter_map(|(id, s)| {
                let chunk = s.chunk.as_ref()?;
                // Held by a running task or a transfer too: writing it out frees nothing.
                (Arc::strong_count(chunk) == 1 && s.bytes > 0).then_some((id, s, chunk))
            })
            .min_by_key(|(_, s, _)| s.last_used.load(Ordering::Relaxed))
            .map(|(id, s, chunk)| (*id, Arc::clone(chunk), s.file.clone()))
    }

    fn spill_one(&self, keep: Option<ChunkId>) -> std::result::Result<Option<u64>, String> {
        let Some((id, chunk, file)) = self.victim(keep) else {
            return Ok(None);
        };
        let file = match file {
            Some(f) => f,
            None => {
                std::fs::create_dir_all(&self.spill_dir)
                    .map_err(|e| format!("{}: {e}", self.spill_dir.display()))?;
                let path = self.spill_dir.join(format!("{}.arrow", id.0));
                let file_bytes = write_spill_file(&path, &chunk)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Arc::new(SpillFile { path, file_bytes })
            }
        };
        let mut map = self.slots.write();
        let Some(slot) = map.get_mut(&id) else {
            return Ok(Some(0));
        };
        // Only if the slot still holds this chunk, and only the store and this call hold it.
        let same = slot.chunk.as_ref().is_some_and(|c| Arc::ptr_eq(c, &chunk));
        if !same || Arc::strong_count(&chunk) != 2 {
            return Ok(Some(0));
        }
        let written = slot.file.is_none();
        slot.chunk = None;
        slot.file = Some(file);
        let bytes = slot.bytes;
        drop(map);
        drop(chunk);
        self.budget.remove_chunk(bytes as usize);
        if written {
            self.budget.spilled(bytes);
        }
        Ok(Some(bytes))
    }
}

impl Spill for StoreInner {
    fn spill(&self, want: usize, keep: Option<ChunkId>) -> usize {
        let mut freed = 0usize;
        let mut misses = 0;
        while freed < want {
            match self.spill_one(keep) {
                Ok(None) => break,
                Ok(Some(0)) => {
                    // Taken by a task between the pick and the write: try another, a few times.
                    misses += 1;
                    if misses > 8 {
                        break;
                    }
                }
                Ok(Some(bytes)) => freed += bytes as usize,
                Err(message) => {
                    self.budget.spill_failed(format!(
                        "{} cannot write a spill file: {message}",
                        self.worker
                    ));
                    break;
                }
            }
        }
        freed
    }
}

fn write_spill_file(path: &std::path::Path, chunk: &Chunk) -> std::io::Result<u64> {
    use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
    use arrow::ipc::CompressionType;
    let to_io = |e: arrow::error::ArrowError| std::io::Error::other(e.to_string());
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .map_err(to_io)?;
    let file = std::fs::File::create(path)?;
    let mut writer =
        FileWriter::try_new_with_options(std::io::BufWriter::new(file), chunk.schema(), options)
            .map_err(to_io)?;
    for batch in chunk.batches() {
        writer.write(batch).map_err(to_io)?;
    }
    writer.finish().map_err(to_io)?;
    let mut inner = writer.into_inner().map_err(to_io)?;
    std::io::Write::flush(&mut inner)?;
    inner.get_ref().sync_data()?;
    Ok(std::fs::metadata(path)?.len())
}

fn read_spill_file(path: &std::path::Path) -> std::result::Result<Chunk, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Chunk::new(schema, batches))
}

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
    mod spilling {
        use crate::chunk::{Chunk, ChunkStore, MemorySpace};
        use crate::ids::WorkerId;
        use crate::memory::MemoryBudget;
        use arrow::array::{ArrayRef, Int64Array, StringArray};
        use arrow::record_batch::RecordBatch;
        use std::sync::Arc;

        fn chunk(seed: i64, rows: i64) -> Chunk {
            let batch = RecordBatch::try_from_iter([
                (
                    "k",
                    Arc::new(Int64Array::from_iter_values(seed..seed + rows)) as ArrayRef,
                ),
                (
                    "s",
                    Arc::new(StringArray::from_iter_values(
                        (seed..seed + rows).map(|i| format!("value {i}")),
                    )) as ArrayRef,
                ),
            ])
            .unwrap();
            Chunk::from_batch(batch)
        }

        fn temp_dir(name: &str) -> std::path::PathBuf {
            let d =
                std::env::temp_dir().join(format!("dirk-chunk-test-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            d
        }

        fn files_under(dir: &std::path::Path) -> usize {
            walk(dir)
        }

        fn walk(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }

        /// Chunks past the budget go to disk, least recently used first, and come back equal.
        #[test]
        fn the_least_recently_used_chunks_spill_and_read_back_equal() {
            let one = chunk(0, 10_000);
            let size = one.bytes() as usize;
            let budget = Arc::new(MemoryBudget::new(Some(size * 5 / 2)));
            let dir = temp_dir("lru");
            let store = ChunkStore::with_budget(WorkerId(0), budget.clone(), dir.clone());
            let a = store.insert(chunk(0, 10_000)).id;
            let b = store.insert(chunk(1, 10_000)).id;
            // `a` is used again, so `b` is now the least recently used.
            drop(store.get(a).unwrap());
            let c = store.insert(chunk(2, 10_000)).id;
            let place = |id| {
                store
                    .spaces()
                    .into_iter()
                    .find(|p| p.id == id)
                    .unwrap()
                    .space
            };
            assert_eq!(place(b), MemorySpace::Spilled);
            assert_eq!(place(a), MemorySpace::Host);
            assert_eq!(place(c), MemorySpace::Host);
            assert!(budget.chunk_bytes() <= size * 5 / 2, "{budget:?}");
            assert_eq!(budget.spilled_total(), size as u64);
            assert!(store.disk_bytes() > 0 && store.disk_bytes() < size as u64);
            assert_eq!(files_under(&dir), 1);
            // Read back: equal to what went in; another chunk makes room for it.
            let back = store.get(b).unwrap();
            assert_eq!(back.batches(), chunk(1, 10_000).batches());
            assert_eq!(budget.reloaded_total(), size as u64);
            assert_eq!(place(b), MemorySpace::Host);
            assert_eq!(
                store
                    .spaces()
                    .iter()
                    .filter(|p| p.space == MemorySpace::Spilled)
                    .count(),
                1
            );
            // Removing chunks deletes their files; dropping the store, its directory.
            store.remove(&[a, b, c]);
            assert_eq!(files_under(&dir), 0);
            assert_eq!(budget.chunk_bytes(), 0);
            drop(store);
            assert_eq!(std::fs::read_dir(&dir).map_or(0, |d| d.count()), 0);
        }

        /// A chunk a task holds cannot be freed by writing it out, so it stays; an operator that
        /// asks for memory gets what spilling the others frees, and a no when nothing can go.
        #[test]
        fn chunks_in_use_stay_and_operators_are_refused_when_nothing_can_spill() {
            let size = chunk(0, 10_000).bytes() as usize;
            let budget = Arc::new(MemoryBudget::new(Some(size * 2)));
            let store = ChunkStore::with_budget(WorkerId(0), budget.clone(), temp_dir("held"));
            let a = store.insert(chunk(0, 10_000)).id;
            let b = store.insert(chunk(1, 10_000)).id;
            let held = store.get(a).unwrap();
            assert!(budget.try_reserve(size / 2));
            let place = |id| {
                store
                    .spaces()
                    .into_iter()
                    .find(|p| p.id == id)
                    .unwrap()
                    .space
            };
            assert_eq!(place(a), MemorySpace::Host);
            assert_eq!(place(b), MemorySpace::Spilled);
            assert!(
                !budget.try_reserve(size),
                "only the held chunk is left in memory"
            );
            budget.release(size / 2);
            drop(held);
            assert!(budget.try_reserve(size * 2));
            assert_eq!(place(a), MemorySpace::Spilled);
            budget.release(size * 2);
            // Taken out for writing: read back, and no longer in the store or the budget.
            let taken = store.take(b).unwrap();
            assert_eq!(taken.batches(), chunk(1, 10_000).batches());
            assert_eq!(store.len(), 1);
        }

        /// A spill directory that cannot be written keeps chunks in memory and says why; a spill
        /// file that cannot be read back is an error naming it, never different data.
        #[test]
        fn spill_failures_are_errors_not_wrong_answers() {
            let size = chunk(0, 10_000).bytes() as usize;
            let blocked = temp_dir("blocked");
            std::fs::write(&blocked, b"a file where the directory should be").unwrap();
            let budget = Arc::new(MemoryBudget::new(Some(size)));
            let store = ChunkStore::with_budget(WorkerId(3), budget.clone(), blocked.clone());
            let a = store.insert(chunk(0, 10_000)).id;
            let _b = store.insert(chunk(1, 10_000)).id;
            assert_eq!(store.disk_bytes(), 0);
            assert_eq!(store.len(), 2);
            let why = budget.spill_error().expect("the failure is kept");
            assert!(
                why.contains("worker 3") && why.contains("cannot write a spill file"),
                "{why}"
            );
            assert_eq!(store.get(a).unwrap().batches(), chunk(0, 10_000).batches());
            std::fs::remove_file(&blocked).unwrap();

            let dir = temp_dir("corrupt");
            let budget = Arc::new(MemoryBudget::new(Some(size * 3 / 2)));
            let store = ChunkStore::with_budget(WorkerId(0), budget, dir.clone());
            let a = store.insert(chunk(0, 10_000)).id;
            let _b = store.insert(chunk(1, 10_000)).id;
            let spilled = store
                .spaces()
                .into_iter()
                .find(|p| p.space == MemorySpace::Spilled)
                .unwrap();
            assert_eq!(spilled.id, a);
            fn corrupt(dir: &std::path::Path) {
                for e in std::fs::read_dir(dir).unwrap().flatten() {
                    if e.path().is_dir() {
                        corrupt(&e.path());
                    } else {
                        std::fs::write(e.path(), b"not arrow").unwrap();
                    }
                }
            }
            corrupt(&dir);
            let e = store.get(a).unwrap_err().to_string();
            assert!(
                e.contains("reading back spilled") && e.contains(".arrow"),
                "{e}"
            );
        }
    }
}
