//! Bringing back chunks lost with their worker, from their lineage.
//!
//! Every chunk's entry holds what its current contents were made from ([`Made`]): put by the
//! caller, an output of a task, or an input a task wrote in place. A task's [`Recipe`] is its
//! kernel, parameters and scope, and what each input held when it ran. A lost chunk is made
//! again by running its recipe once more over its inputs as they were: inputs still held with
//! those contents are read where they are; the others are made again first, recursively. A
//! chunk written in place N times is rebuilt by replaying those N writes, in order, over a
//! private copy of its first contents. What was put by the caller has no recipe: a copy kept on
//! another worker ([`Event::ChunkAdded`]'s replica) is its source.
//!
//! The rebuilt chunk keeps its id: its entry maps it to the id under which its new owner
//! stores it (`ChunkEntry::stored`).

use super::*;

/// What a user of a cluster should hear of: a worker lost, and what it held rebuilt
/// ([`crate::Context::take_notices`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A worker was declared lost, holding `chunks` chunks.
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// Why.
        reason: String,
        /// The chunks it held.
        chunks: usize,
    },
    /// A worker declared lost answered again and joined anew.
    Rejoined {
        /// Its new id.
        worker: WorkerId,
        /// The id it was lost as.
        was: WorkerId,
        /// Where it listens.
        address: String,
    },
    /// Every chunk lost with `worker` has been rebuilt elsewhere, but `failed`.
    Rebuilt {
        /// The lost worker.
        worker: WorkerId,
        /// The chunks rebuilt (from lineage or from replicas).
        chunks: usize,
        /// The chunks nothing could rebuild.
        failed: usize,
        /// From the loss to the last rebuild.
        took: std::time::Duration,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::WorkerLost {
                worker,
                reason,
                chunks,
            } => write!(
                f,
                "{worker} lost ({reason}); rebuilding the {chunks} chunks it held"
            ),
            Notice::Rejoined {
                worker,
                was,
                address,
            } => write!(
                f,
                "{was} at {address} answers again: it rejoined as {worker}"
            ),
            Notice::Rebuilt {
                worker,
                chunks,
                failed,
                took,
            } => {
                write!(
                    f,
                    "the chunks lost with {worker} rebuilt: {chunks} in {:.1} s",
                    took.as_secs_f64()
                )?;
                if *failed > 0 {
                    write!(f, "; {failed} could not be (put without a replica)")?;
                }
                Ok(())
            }
        }
    }
}

/// Adds `notice` to `notices`. Nobody may be reading them: past 1,000 the oldest go.
pub(crate) fn push_notice(notices: &Mutex<Vec<Notice>>, notice: Notice) {
    let mut notices = notices.lock();
    if notices.len() >= 1000 {
        notices.remove(0);
    }
    notices.push(notice);
}

/// The rebuild of what one lost worker held.
pub(crate) struct Rebuild {
    started: std::time::Instant,
    pending: std::collections::HashSet<ChunkId, IdBuildHasher>,
    done: usize,
    failed: usize,
}

/// How the label of every task that rebuilds a lost chunk begins (in the event log, traces and
/// `EXPLAIN ANALYZE`).
pub const RECOMPUTE_PREFIX: &str = "recompute: ";

/// What a chunk's current contents were made from: what recovery runs again.
pub(crate) enum Made {
    /// Put into a store by the caller.
    Put,
    /// Output `index` of running the recipe.
    Output(Arc<Recipe>, u32),
    /// Input `index` of the recipe, after its task wrote it in place.
    Written(Arc<Recipe>, u32),
}

impl std::fmt::Debug for Made {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Made::Put => write!(f, "put"),
            Made::Output(r, i) => write!(f, "output {i} of {}", r.kernel),
            Made::Written(r, i) => write!(f, "input {i} written by {}", r.kernel),
        }
    }
}

/// A task as it ran: enough to run it again.
pub(crate) struct Recipe {
    pub(crate) kernel: Arc<str>,
    pub(crate) params: Arc<[u8]>,
    pub(crate) scope: Scope,
    pub(crate) label: Option<Arc<str>>,
    pub(crate) cost_class: Option<u64>,
    /// The task runs at most once ([`crate::TaskOptions::once`]): what it made cannot be made
    /// again.
    pub(crate) once: bool,
    /// Each input's contents when the task ran, and how the task used it.
    pub(crate) inputs: Vec<(Arc<Made>, Access)>,
}

impl Drop for Recipe {
    fn drop(&mut self) {
        // A chunk written in place N times holds a chain of N recipes: unwound here in a loop,
        // where dropping it by recursion would overflow the stack of a long one.
        let mut pending: Vec<Arc<Made>> = self.inputs.drain(..).map(|(m, _)| m).collect();
        while let Some(made) = pending.pop() {
            if let Ok(Made::Output(r, _) | Made::Written(r, _)) = Arc::try_unwrap(made) {
                if let Ok(mut recipe) = Arc::try_unwrap(r) {
                    pending.extend(recipe.inputs.drain(..).map(|(m, _)| m));
                }
            }
        }
    }
}

/// The tasks of one rebuild, as they are submitted.
struct Plan {
    /// The chunks not lost, by the address of their contents' `Made` (taken when the rebuild
    /// starts: submitting its tasks changes no entry).
    live: HashMap<usize, Vec<ChunkId>>,
    /// Every task's slot, in submission order.
    slots: Vec<Arc<TaskSlot>>,
    /// Contents made (or found) once for readers, by address: read again, not made again.
    read: HashMap<usize, ArgSource>,
}

/// A task that rebuilds a lost chunk: where the rebuilt contents are when it has finished.
pub(crate) struct Restore {
    /// The lost chunk.
    pub(crate) chunk: ChunkId,
    /// Which of the task's chunks becomes it.
    pub(crate) from: RestoreFrom,
    /// The other tasks of the rebuild: what they made is freed once it is done.
    pub(crate) helpers: Vec<Arc<TaskSlot>>,
}

impl Restore {
    /// The chunks the helpers made (those that finished).
    fn helper_outputs(&self) -> Vec<ChunkId> {
        self.helpers
            .iter()
            .filter_map(|slot| match slot.get() {
                Some(Ok(out)) => Some(out.chunks.into_iter().map(|m| m.id)),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

pub(crate) enum RestoreFrom {
    /// This output of the task.
    Output(u32),
    /// The input the task wrote in place (an output of one of the helpers).
    Written(ArgSource),
}

impl Scheduler {
    /// Starts rebuilding lost chunk `c` unless that has started: the task that restores it, or
    /// `None` when a replica took its place at once. Fails at once when nothing can rebuild it.
    pub(super) fn recover(&mut self, c: ChunkId) -> Result<Option<TaskId>> {
        let entry = self
            .chunks
            .get(&c)
            .ok_or(EngineError::UnknownChunk { chunk: c })?;
        if !entry.lost {
            return Ok(None);
        }
        if let Some(task) = entry.recovering {
            return Ok(Some(task));
        }
        let made = entry.made.clone();
        if let Made::Put = *made {
            // A replica holding the same contents takes its place without running anything.
            let replica = self.live_version(&self.live_index(), &made);
            let replica = replica.ok_or(EngineError::ChunkLost {
                chunk: c,
                worker: entry.meta.owner,
            })?;
            self.adopt(c, replica);
            return Ok(None);
        }
        let mut plan = Plan {
            live: self.live_index(),
            slots: Vec::new(),
            read: HashMap::new(),
        };
        let (task, from) = match &*made {
            Made::Output(recipe, i) => {
                let (task, _, _) = self.rerun(recipe, &mut plan)?;
                (task, RestoreFrom::Output(*i))
            }
            Made::Written(recipe, i) => {
                let (task, _, args) = self.rerun(recipe, &mut plan)?;
                (task, RestoreFrom::Written(args[*i as usize].clone()))
            }
            Made::Put => unreachable!("handled above"),
        };
        // The last task submitted is the one that restores the chunk; the others helped.
        let mut helpers = plan.slots;
        helpers.pop();
        let t = self.tasks.get_mut(&task).expect("just submitted");
        t.restores = Some(Restore {
            chunk: c,
            from,
            helpers,
        });
        if let Some(e) = self.chunks.get_mut(&c) {
            e.recovering = Some(task);
        }
        Ok(Some(task))
    }

    /// A chunk that holds contents `made` now, is not lost, and that no unfinished task will
    /// write first (a reader submitted now would read after that write).
    fn live_version(
        &self,
        live: &HashMap<usize, Vec<ChunkId>>,
        made: &Arc<Made>,
    ) -> Option<ChunkId> {
        live.get(&(Arc::as_ptr(made) as usize))?
            .iter()
            .copied()
            .find(|id| self.deps.pending_writer(DataKey::Chunk(*id)).is_none())
    }

    /// The chunks not lost, by the address of their contents.
    fn live_index(&self) -> HashMap<usize, Vec<ChunkId>> {
        let mut live: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for (id, e) in &self.chunks {
            if !e.lost {
                live.entry(Arc::as_ptr(&e.made) as usize)
                    .or_default()
                    .push(*id);
            }
        }
        live
    }

    /// Submits the tasks that make contents `made` again and says where they will be. A
    /// `private` copy is one the caller may write: never a chunk someone else holds.
    fn materialize(
        &mut self,
        made: &Arc<Made>,
        private: bool,
        plan: &mut Plan,
    ) -> Result<ArgSource> {
        let key = Arc::as_ptr(made) as usize;
        if !private {
            if let Some(source) = plan.read.get(&key) {
                return Ok(source.clone());
            }
        }
        let source = self.materialize_once(made, private, plan)?;
        if !private {
            plan.read.insert(key, source.clone());
        }
        Ok(source)
    }

    fn materialize_once(
        &mut self,
        made: &Arc<Made>,
        private: bool,
        plan: &mut Plan,
    ) -> Result<ArgSource> {
        let live = self.live_version(&plan.live, made);
        match (&**made, live) {
            (_, Some(c)) if !private => Ok(ArgSource::Chunk(c)),
            (_, Some(c)) => {
                let (task, slot) = self.submit_internal(
                    Arc::from(crate::kernel::COPY_KERNEL),
                    Arc::from(&[][..]),
                    Scope::any(),
                    Some(Arc::from(format!("{RECOMPUTE_PREFIX}copy"))),
                    None,
                    vec![Arg::chunk(c, Access::Read)],
                )?;
                plan.slots.push(slot.clone());
                Ok(ArgSource::Output {
                    task,
                    index: 0,
                    slot,
                })
            }
            (Made::Put, None) => Err(EngineError::Failed {
                kind: ErrorKind::Retryable,
                message: "data put by the caller was lost with its worker and every copy".into(),
            }),
            (Made::Output(recipe, i), None) => {
                let (task, slot, _) = self.rerun(recipe, plan)?;
                Ok(ArgSource::Output {
                    task,
                    index: *i,
                    slot,
                })
            }
            (Made::Written(recipe, i), None) => {
                let (_, _, args) = self.rerun(recipe, plan)?;
                Ok(args[*i as usize].clone())
            }
        }
    }

    /// Submits `recipe` once more over its inputs as they were: the task, its slot, and its
    /// arguments' sources.
    fn rerun(
        &mut self,
        recipe: &Arc<Recipe>,
        plan: &mut Plan,
    ) -> Result<(TaskId, Arc<TaskSlot>, Vec<ArgSource>)> {
        if recipe.once {
            return Err(EngineError::Failed {
                kind: ErrorKind::Retryable,
                message: format!(
                    "lost data was made by a task of `{}` that runs at most once",
                    recipe.kernel
                ),
            });
        }
        let mut args = Vec::with_capacity(recipe.inputs.len());
        for (made, access) in &recipe.inputs {
            let source = self.materialize(made, access.writes(), plan)?;
            args.push(Arg {
                source,
                access: *access,
            });
        }
        let sources = args.iter().map(|a| a.source.clone()).collect();
        let label = format!(
            "{RECOMPUTE_PREFIX}{}",
            recipe.label.as_deref().unwrap_or(&recipe.kernel)
        );
        let (task, slot) = self.submit_internal(
            recipe.kernel.clone(),
            recipe.params.clone(),
            self.surviving_scope(&recipe.scope),
            Some(Arc::from(label)),
            recipe.cost_class,
            args,
        )?;
        plan.slots.push(slot.clone());
        Ok((task, slot, sources))
    }

    /// `scope`, or any processor when only lost workers matched it: work placed on a worker
    /// (a partition's home) goes elsewhere when that worker is lost.
    pub(super) fn surviving_scope(&self, scope: &Scope) -> Scope {
        let matches = |alive: bool| {
            self.procs
                .iter()
                .any(|p| p.alive == alive && scope.contains(&p.id))
        };
        if !matches(true) && matches(false) {
            Scope::any()
        } else {
            scope.clone()
        }
    }

    /// Submits a task of the scheduler's own (it holds no place of the caller's bound).
    fn submit_internal(
        &mut self,
        kernel: Arc<str>,
        params: Arc<[u8]>,
        scope: Scope,
        label: Option<Arc<str>>,
        cost_class: Option<u64>,
        args: Vec<Arg>,
    ) -> Result<(TaskId, Arc<TaskSlot>)> {
        let id = TaskId(self.next_task.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(TaskSlot::default());
        let sub = Submission {
            id,
            kernel,
            params,
            args,
            after: Vec::new(),
            scope,
            label,
            cost_class,
            slot: slot.clone(),
            submitted_us: now_us(),
            counted: false,
            once: false,
        };
        self.submit(Box::new(sub));
        match slot.get() {
            Some(Err(e)) => Err(e),
            _ => Ok((id, slot)),
        }
    }
}

impl Scheduler {
    /// The caller put a chunk (and perhaps a replica of it on another worker).
    pub(super) fn chunk_added(
        &mut self,
        meta: ChunkMeta,
        pinned: bool,
        replica: Option<ChunkMeta>,
    ) {
        let made = Arc::new(Made::Put);
        let id = meta.id;
        let mut entry = ChunkEntry::new(meta, pinned, Lineage::Put, made.clone());
        if let Some(r) = replica {
            entry.replica = Some(r.id);
            let mut copy = ChunkEntry::new(r, false, Lineage::Put, made);
            copy.replica_of = Some(id);
            self.chunks.insert(copy.meta.id, copy);
        }
        self.chunks.insert(id, entry);
    }

    /// Answers where chunk `id` is; for a lost chunk being rebuilt, once it is.
    pub(super) fn locate(&mut self, id: ChunkId, reply: Sender<Result<ChunkEntry>>) {
        if self.chunks.get(&id).is_some_and(|e| e.lost) {
            if let Ok(Some(_)) = self.recover(id) {
                self.locate_waiters.entry(id).or_default().push(reply);
                return;
            }
        }
        let _ = reply.send(
            self.chunks
                .get(&id)
                .cloned()
                .ok_or(EngineError::UnknownChunk { chunk: id }),
        );
    }

    fn answer_locates(&mut self, id: ChunkId) {
        for reply in self.locate_waiters.remove(&id).unwrap_or_default() {
            let _ = reply.send(
                self.chunks
                    .get(&id)
                    .cloned()
                    .ok_or(EngineError::UnknownChunk { chunk: id }),
            );
        }
    }

    /// Task `id` is ready but some of its inputs are lost: it waits for their rebuilds
    /// (`true`), or fails when one cannot be rebuilt.
    pub(super) fn await_lost_inputs(&mut self, id: TaskId) -> Result<bool> {
        let Some(t) = self.tasks.get(&id) else {
            return Ok(false);
        };
        let lost: Vec<ChunkId> = t
            .sub
            .args
            .iter()
            .filter_map(|a| match &a.source {
                ArgSource::Chunk(c) => Some(*c),
                ArgSource::Output { index, slot, .. } => slot.output_chunk(*index)?.ok(),
            })
            .filter(|c| self.chunks.get(c).is_some_and(|e| e.lost))
            .collect();
        let mut waits = false;
        for c in lost {
            let Some(rebuild) = self.recover(c)? else {
                continue;
            };
            if let Some(r) = self.tasks.get_mut(&rebuild) {
                if !r.dependents.contains(&id) {
                    r.dependents.push(id);
                    waits = true;
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.waiting_on += 1;
                    }
                }
            }
        }
        Ok(waits)
    }

    /// Starts rebuilding the chunks lost with a worker, in the background: queries that need
    /// them wait for the rebuilds. Replicas lost are dropped; what cannot be rebuilt stays lost
    /// and fails whatever reads it.
    pub(super) fn rebuild_lost(&mut self, worker: WorkerId, reason: String, lost: Vec<ChunkId>) {
        let mut rebuild = Rebuild {
            started: std::time::Instant::now(),
            pending: Default::default(),
            done: 0,
            failed: 0,
        };
        for c in lost {
            let Some(e) = self.chunks.get(&c) else {
                continue;
            };
            if let Some(primary) = e.replica_of {
                self.chunks.remove(&c);
                if let Some(p) = self.chunks.get_mut(&primary) {
                    p.replica = None;
                }
                continue;
            }
            match self.recover(c) {
                Ok(Some(_)) => {
                    rebuild.pending.insert(c);
                    self.rebuilding_from.insert(c, worker);
                }
                Ok(None) => rebuild.done += 1,
                Err(_) => rebuild.failed += 1,
            }
        }
        self.notify(Notice::WorkerLost {
            worker,
            reason,
            chunks: rebuild.pending.len() + rebuild.done + rebuild.failed,
        });
        self.rebuilds.insert(worker, rebuild);
        self.rebuild_progress(worker);
    }

    /// Chunk `c`'s rebuild ended (`ok`: it is back): one step of its worker's rebuild.
    fn rebuild_ended(&mut self, c: ChunkId, ok: bool) {
        let Some(worker) = self.rebuilding_from.remove(&c) else {
            return;
        };
        if let Some(r) = self.rebuilds.get_mut(&worker) {
            if r.pending.remove(&c) {
                if ok {
                    r.done += 1;
                } else {
                    r.failed += 1;
                }
            }
        }
        self.rebuild_progress(worker);
    }

    fn rebuild_progress(&mut self, worker: WorkerId) {
        if self
            .rebuilds
            .get(&worker)
            .is_some_and(|r| r.pending.is_empty())
        {
            let r = self.rebuilds.remove(&worker).expect("just seen");
            if r.done + r.failed > 0 {
                self.notify(Notice::Rebuilt {
                    worker,
                    chunks: r.done,
                    failed: r.failed,
                    took: r.started.elapsed(),
                });
            }
        }
    }

    fn notify(&self, notice: Notice) {
        push_notice(&self.notices, notice);
    }

    /// Chunk `c` is from now on the chunk held as `held` (a replica, or what a rebuild made):
    /// `c` keeps its id, and takes `held`'s owner and storage.
    fn adopt(&mut self, c: ChunkId, held: ChunkId) {
        let Some(h) = self.chunks.remove(&held) else {
            return;
        };
        let Some(e) = self.chunks.get_mut(&c) else {
            // Freed while it was rebuilt.
            if let Some(w) = self.workers.get(&h.meta.owner).filter(|w| w.alive) {
                w.worker.free_chunks(&[h.stored]);
            }
            self.rebuild_ended(c, true);
            return;
        };
        if e.stored != c {
            self.aliases.remove(&e.stored);
        }
        e.meta = ChunkMeta { id: c, ..h.meta };
        e.stored = h.stored;
        e.lost = false;
        e.recovering = None;
        if e.replica == Some(held) {
            e.replica = None;
        }
        if h.stored != c {
            self.aliases.insert(h.stored, c);
        }
        self.answer_locates(c);
        self.rebuild_ended(c, true);
    }

    /// A rebuild finished: its chunk takes the place of the lost one, and what its helpers
    /// made for it is freed.
    pub(super) fn restored(&mut self, restore: Restore, outputs: &[ChunkMeta]) {
        let made = match &restore.from {
            RestoreFrom::Output(i) => outputs.get(*i as usize).map(|m| m.id),
            RestoreFrom::Written(ArgSource::Chunk(c)) => Some(*c),
            RestoreFrom::Written(ArgSource::Output { index, slot, .. }) => {
                slot.output_chunk(*index).and_then(|r| r.ok())
            }
        };
        let mut temporary: Vec<ChunkId> = outputs.iter().map(|m| m.id).collect();
        temporary.extend(restore.helper_outputs());
        if let Some(x) = made {
            temporary.retain(|id| *id != x);
            self.adopt(restore.chunk, x);
        } else {
            self.restore_failed_for(restore.chunk);
        }
        self.free_chunks(temporary);
    }

    /// A rebuild failed: the chunk stays lost, and what its helpers made is freed.
    pub(super) fn restore_failed(&mut self, restore: Restore) {
        self.free_chunks(restore.helper_outputs());
        self.restore_failed_for(restore.chunk);
    }

    fn restore_failed_for(&mut self, c: ChunkId) {
        if let Some(e) = self.chunks.get_mut(&c) {
            e.recovering = None;
        }
        self.answer_locates(c);
        self.rebuild_ended(c, false);
    }
}
