//! Running `dirk.mutate` steps from the driver: one task per chunk of a table, on the worker
//! that owns it.

use crate::error::Result;
use crate::kernels::mutation::MUTATE_KERNEL;
use crate::table::DTable;
use dirk_engine::{Arg, ChunkRef, Context, TaskOptions};

/// One `dirk.mutate` task per chunk, in order, with the parameters `params` gives it;
/// returns each chunk with its task's outputs. On any failure every output is freed and
/// the first error returned.
pub(crate) async fn each_chunk(
    engine: &Context,
    table: &DTable,
    label: &str,
    mut params: impl FnMut(&ChunkRef) -> Vec<u8>,
) -> Result<Vec<(ChunkRef, Vec<ChunkRef>)>> {
    let handles: Vec<_> = table
        .chunks()
        .map(|c| {
            let opts = TaskOptions::new().params(params(c)).label(label);
            (
                c.clone(),
                engine.spawn(MUTATE_KERNEL, vec![Arg::read(c)], opts),
            )
        })
        .collect();
    let mut done = Vec::with_capacity(handles.len());
    let mut failure = None;
    for (chunk, h) in handles {
        match h.join().await {
            Ok(out) => done.push((chunk, out.chunks)),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        let made: Vec<ChunkRef> = done.into_iter().flat_map(|(_, o)| o).collect();
        engine.free(&made)?;
        return Err(e.into());
    }
    Ok(done)
}
