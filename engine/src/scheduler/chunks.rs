//! Workers joining and the chunk directory's frees (deferred while readers still run).

use super::*;

impl Scheduler {
    pub(super) fn add_worker(&mut self, w: WorkerRef) {
        let id = w.id();
        for (kind, slots) in w.processors() {
            self.procs.push(ProcState {
                id: ProcessorId { worker: id, kind },
                slots: slots.max(1),
                in_flight: 0,
                queue: VecDeque::new(),
                queued_s: 0.0,
                alive: true,
            });
        }
        self.workers.insert(
            id,
            WorkerEntry {
                worker: w,
                alive: true,
            },
        );
    }

    /// Frees chunks, or defers each until the unfinished tasks that access it have finished.
    pub(super) fn free_chunks(&mut self, ids: Vec<ChunkId>) {
        let (later, now): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .partition(|id| self.deps.in_use(DataKey::Chunk(*id)));
        self.deferred_frees.extend(later);
        self.free_now(now);
    }

    /// `task` has finished or will never run: its keys are released, and a chunk whose free
    /// waited for the last of its readers is freed now. The work is per key of the task, not
    /// per deferred free.
    pub(super) fn release_keys(&mut self, task: TaskId, keys: &[DataKey]) {
        let mut now = Vec::new();
        let deferred = &mut self.deferred_frees;
        self.deps.forget(task, keys, |key| {
            if let DataKey::Chunk(c) = key {
                if !deferred.is_empty() && deferred.remove(&c) {
                    now.push(c);
                }
            }
        });
        self.free_now(now);
    }

    pub(super) fn free_now(&mut self, ids: Vec<ChunkId>) {
        if ids.is_empty() {
            return;
        }
        let mut by_owner: HashMap<WorkerId, Vec<ChunkId>> = HashMap::new();
        for id in ids {
            let Some(e) = self.chunks.remove(&id) else {
                continue;
            };
            if e.stored != id {
                self.aliases.remove(&e.stored);
            }
            by_owner.entry(e.meta.owner).or_default().push(e.stored);
            // The replica stays while the lineage of a live chunk reads what was put (a table
            // made from this one may have to be made again from it).
            self.replicas_kept.extend(e.replica);
        }
        let mut kept = std::mem::take(&mut self.replicas_kept);
        kept.retain(|r| match self.chunks.get(r) {
            Some(e) if Arc::strong_count(&e.made) == 1 => {
                by_owner.entry(e.meta.owner).or_default().push(e.stored);
                self.chunks.remove(r);
                false
            }
            Some(_) => true,
            None => false,
        });
        self.replicas_kept = kept;
        for (owner, ids) in by_owner {
            if let Some(w) = self.workers.get(&owner).filter(|w| w.alive) {
                w.worker.free_chunks(&ids);
            }
        }
    }
}
