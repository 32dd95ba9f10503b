//! The in-place writes of one statement (`UpdateApply` tasks, one per chunk): all of them
//! land, or none does.
//!
//! Each write first checks everything that can fail and returns the values it overwrites. When
//! a write fails, or the statement is dropped before its writes are done (cancelled), every
//! write is undone by applying what it overwrote: datadeps orders each undo after its write
//! and before any later statement's tasks on the chunk, and a write that failed changed
//! nothing, so its undo (which fails with it) is not needed.

use crate::error::{DirkError, Result};
use crate::kernels::fragment::encode_with_header;
use crate::kernels::mutation::{Step, MUTATE_KERNEL};
use dirk_engine::{Arg, ChunkRef, Context, TaskHandle, TaskOptions};
use std::sync::Arc;

/// A statement's writes, undone unless [`InPlaceWrites::finish`] saw all of them succeed.
pub(crate) struct InPlaceWrites {
    engine: Arc<Context>,
    undo: Vec<u8>,
    writes: Vec<(ChunkRef, TaskHandle)>,
    /// Chunks the writes read, freed once the writes (and undos) are done.
    then_free: Vec<ChunkRef>,
    settled: bool,
}

impl InPlaceWrites {
    /// The `UpdateApply` parameters for value columns written to table `columns`.
    fn params(columns: &[usize], undo: bool) -> Vec<u8> {
        encode_with_header(
            &Step::UpdateApply {
                columns: columns.to_vec(),
                undo,
            },
            &[],
        )
    }

    /// Writes `values` into each target (in place, on its worker). Call it under the catalog
    /// lock, with what publishes the statement, so no query sees half of it.
    pub(crate) fn spawn<'a>(
        engine: &Arc<Context>,
        columns: &[usize],
        targets: impl IntoIterator<Item = (&'a ChunkRef, &'a [ChunkRef])>,
    ) -> Self {
        let params = Self::params(columns, false);
        let writes = targets
            .into_iter()
            .map(|(target, values)| {
                let mut args = vec![Arg::read_write(target)];
                args.extend(values.iter().map(Arg::read));
                let h = engine.spawn(
                    MUTATE_KERNEL,
                    args,
                    TaskOptions::new()
                        .params(params.clone())
                        .label("UpdateApply"),
                );
                (target.clone(), h)
            })
            .collect();
        InPlaceWrites {
            engine: Arc::clone(engine),
            undo: Self::params(columns, true),
            writes,
            then_free: Vec::new(),
            settled: false,
        }
    }

    /// Frees `chunks` (what the writes read) once the writes, or their undos, are done: also
    /// when the statement is dropped first.
    pub(crate) fn then_free(mut self, chunks: Vec<ChunkRef>) -> Self {
        self.then_free = chunks;
        self
    }

    /// Waits for every write. When one failed, undoes all and returns its error (the table
    /// as it was before the statement).
    pub(crate) async fn finish(mut self) -> Result<()> {
        let mut failure = None;
        let mut overwritten = Vec::new();
        for (_, h) in &self.writes {
            match h.join().await {
                Ok(out) => overwritten.extend(out.chunks),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.settled = true;
        overwritten.append(&mut self.then_free);
        let Some(failure) = failure else {
            self.engine.free(&overwritten)?;
            return Ok(());
        };
        let undos = self.spawn_undos();
        let mut stuck = None;
        for (failed_write, h) in undos {
            match h.join().await {
                Ok(out) => overwritten.extend(out.chunks),
                Err(e) if !failed_write => {
                    stuck.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        self.engine.free(&overwritten)?;
        match stuck {
            None => Err(failure.into()),
            Some(e) => Err(DirkError::UndoFailed {
                failure: failure.to_string(),
                undo: e.to_string(),
            }),
        }
    }

    /// One undo per write, each after its write; whether that write failed.
    fn spawn_undos(&self) -> Vec<(bool, TaskHandle)> {
        self.writes
            .iter()
            .map(|(target, write)| {
                let failed = matches!(write.try_result(), Some(Err(_)));
                let h = self.engine.spawn(
                    MUTATE_KERNEL,
                    vec![Arg::read_write(target), Arg::output(write, 0)],
                    TaskOptions::new()
                        .params(self.undo.clone())
                        .label("UpdateUndo"),
                );
                (failed, h)
            })
            .collect()
    }
}

impl Drop for InPlaceWrites {
    /// The statement was dropped while its writes ran: undo them all. The undos are ordered
    /// before anything submitted later; a thread frees what they used once they are done.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let undos = self.spawn_undos();
        let writes = std::mem::take(&mut self.writes);
        let mut used = std::mem::take(&mut self.then_free);
        let engine = Arc::clone(&self.engine);
        let _ = std::thread::Builder::new()
            .name("dirk-undo".into())
            .spawn(move || {
                for h in writes
                    .iter()
                    .map(|(_, h)| h)
                    .chain(undos.iter().map(|(_, h)| h))
                {
                    if let Ok(out) = h.wait() {
                        used.extend(out.chunks);
                    }
                }
                let _ = engine.free(&used);
            });
    }
}
