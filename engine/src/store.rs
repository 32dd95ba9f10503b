//! A worker's chunk store: its chunks in host memory, or in spill files when its memory budget
//! needs room (Dagger's disk caching, least recently used first).

use crate::chunk::{Chunk, ChunkMeta, MemorySpace};
use crate::error::{EngineError, Result};
use crate::ids::{ChunkId, IdMap, WorkerId};
use crate::memory::{MemoryBudget, MemoryBudgetRef, Spill};
use parking_lot::RwLock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    slots: RwLock<IdMap<ChunkId, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// The chunk, while it is in memory.
    chunk: Option<Arc<Chunk>>,
    /// Its spill file, once written (kept after a reload: the chunk is immutable in the store,
    /// so spilling it again costs no write).
    file: Option<Arc<SpillFile>>,
    /// Bytes its values take when resident ([`Chunk::data_bytes`]).
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
            slots: RwLock::new(IdMap::default()),
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
        // What the chunk's values take: where it shares buffers with other chunks (the parts
        // of a split, columns passed through a projection), each counts its own part once.
        let bytes = meta.bytes;
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
                // A new name per file: a chunk rewritten in place and spilled again must not
                // take the name of its old file, which a reader may still hold (and delete).
                let path = self
                    .spill_dir
                    .join(format!("{}-{}.arrow", id.0, self.tick()));
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
    fn held(&self) -> usize {
        self.slots
            .read()
            .values()
            .filter_map(|s| s.chunk.as_ref().map(|c| (c, s.bytes)))
            .filter(|(c, _)| Arc::strong_count(c) > 1)
            .map(|(_, b)| b as usize)
            .sum()
    }

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
    use super::ChunkStore;
    use crate::chunk::{Chunk, MemorySpace};
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
        let d = std::env::temp_dir().join(format!("dirk-chunk-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn space_of(store: &ChunkStore, id: crate::ids::ChunkId) -> MemorySpace {
        store
            .spaces()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
            .space
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
        let size = one.data_bytes() as usize;
        let budget = Arc::new(MemoryBudget::new(Some(size * 5 / 2)));
        let dir = temp_dir("lru");
        let store = ChunkStore::with_budget(WorkerId(0), budget.clone(), dir.clone());
        let a = store.insert(chunk(0, 10_000)).id;
        let b = store.insert(chunk(1, 10_000)).id;
        // `a` is used again, so `b` is now the least recently used.
        drop(store.get(a).unwrap());
        let c = store.insert(chunk(2, 10_000)).id;
        let place = |id| space_of(&store, id);
        assert_eq!(place(b), MemorySpace::Spilled);
        assert_eq!(place(a), MemorySpace::Host);
        assert_eq!(place(c), MemorySpace::Host);
        assert!(budget.chunk_bytes() <= size * 5 / 2, "{budget:?}");
        let b_size = chunk(1, 10_000).data_bytes();
        assert_eq!(budget.spilled_total(), b_size);
        assert!(store.disk_bytes() > 0 && store.disk_bytes() < b_size);
        assert_eq!(files_under(&dir), 1);
        // Read back: equal to what went in; another chunk makes room for it.
        let back = store.get(b).unwrap();
        assert_eq!(back.batches(), chunk(1, 10_000).batches());
        assert_eq!(budget.reloaded_total(), b_size);
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
        let size = chunk(0, 10_000).data_bytes() as usize;
        let budget = Arc::new(MemoryBudget::new(Some(size * 2)));
        let store = ChunkStore::with_budget(WorkerId(0), budget.clone(), temp_dir("held"));
        let a = store.insert(chunk(0, 10_000)).id;
        let b = store.insert(chunk(1, 10_000)).id;
        let held = store.get(a).unwrap();
        assert!(budget.try_reserve(size / 2));
        let place = |id| space_of(&store, id);
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
        let size = chunk(0, 10_000).data_bytes() as usize;
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
