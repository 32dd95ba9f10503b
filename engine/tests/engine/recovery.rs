//! Lost chunks rebuilt from their lineage: outputs by running their tasks again, chunks
//! written in place by replaying the writes, chunks the caller put from their replicas.

use super::common::{register, value_chunk, value_of};
use dirk_engine::{Arg, ChunkRef, Context, EngineError, Notice, Scope, TaskOptions, WorkerId};

fn context(workers: usize, replicate_puts: bool) -> Context {
    let ctx = Context::builder()
        .workers(workers)
        .replicate_puts(replicate_puts)
        .build()
        .unwrap();
    register(&ctx);
    ctx
}

fn on(worker: u32) -> TaskOptions {
    TaskOptions::new().scope(Scope::worker(WorkerId(worker)))
}

fn add(ctx: &Context, inputs: &[&ChunkRef], k: i64, worker: u32) -> ChunkRef {
    let args = inputs.iter().map(|c| Arg::read(c)).collect();
    let options = on(worker).params_json(&[k]).unwrap();
    ctx.spawn("add", args, options).wait().unwrap().chunks[0].clone()
}

/// `c := a * c + b * other` in place, on `worker`.
fn affine(ctx: &Context, c: &ChunkRef, other: &ChunkRef, [a, b]: [i64; 2], worker: u32) {
    let options = on(worker).params_json(&[a, b]).unwrap();
    ctx.spawn(
        "affine",
        vec![Arg::read_write(c), Arg::read(other)],
        options,
    )
    .wait()
    .unwrap();
}

fn recomputed(ctx: &Context) -> usize {
    ctx.event_log()
        .records
        .iter()
        .filter(|r| r.name.starts_with(dirk_engine::RECOMPUTE_PREFIX))
        .count()
}

/// An output lost with its worker is made again by its task, over inputs that were freed
/// since (made again first, recursively): the caller's handle reads the same value, now held
/// by a surviving worker.
#[test]
fn a_lost_output_is_made_again_from_its_lineage_through_freed_inputs() {
    let ctx = context(3, false);
    let x = ctx.put_on(WorkerId(0), value_chunk(10), false).unwrap();
    let y = add(&ctx, &[&x], 1, 1);
    let z = add(&ctx, &[&y, &x], 100, 1);
    ctx.free(std::slice::from_ref(&y)).unwrap();
    ctx.wait_idle().unwrap();
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    assert_eq!(value_of(&ctx.fetch(&z).unwrap()), 10 + 1 + 10 + 100);
    let entry = ctx.locate(&z).unwrap();
    assert!(!entry.lost);
    assert_ne!(entry.meta.owner, WorkerId(1));
    assert_eq!(entry.meta.id, z.id, "the rebuilt chunk keeps its id");
    assert_eq!(recomputed(&ctx), 2, "y, then z");
    // It reads and writes as any chunk, and is freed as one.
    assert_eq!(value_of(&ctx.fetch(&add(&ctx, &[&z], 1, 2)).unwrap()), 122);
    ctx.free(&[z]).unwrap();
    ctx.wait_idle().unwrap();
}

/// A chunk written in place comes back by replaying its writes in order over a fresh copy of
/// its first contents, reading the other inputs as they were then; it can be lost and rebuilt
/// again after more writes.
#[test]
fn a_chunk_written_in_place_is_rebuilt_by_replaying_its_writes() {
    let ctx = context(3, false);
    let x0 = ctx.put_on(WorkerId(0), value_chunk(3), false).unwrap();
    let x = add(&ctx, &[&x0], 0, 0); // 3, made by a task
    let c = add(&ctx, &[&x], 0, 1); // 3
    affine(&ctx, &c, &x, [2, 1], 1); // 2*3 + 3 = 9
    affine(&ctx, &c, &x, [10, 0], 1); // 90
                                      // x changes after those writes; the rebuild must read it as it was (3).
    affine(&ctx, &x, &x0, [0, -1], 0); // x := -3
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    assert_eq!(value_of(&ctx.fetch(&c).unwrap()), 90);
    assert_eq!(
        recomputed(&ctx),
        4,
        "x as it was (once), the add, both writes"
    );
    let owner = ctx.locate(&c).unwrap().meta.owner;
    assert_ne!(owner, WorkerId(1));

    // More writes where it lives now, then that worker is lost too.
    let survivor = if owner == WorkerId(0) { 2 } else { 0 };
    affine(&ctx, &c, &x, [1, 1], owner.0); // 87
    ctx.remove_worker(owner, "killed by test").unwrap();
    if owner == WorkerId(0) {
        // x0 was put on worker 0 without a replica: nothing can rebuild x as it was, nor c.
        let e = ctx.fetch(&c).unwrap_err();
        assert!(matches!(e, EngineError::ChunkLost { .. }), "{e}");
    } else {
        assert_eq!(value_of(&ctx.fetch(&c).unwrap()), 87);
        assert_eq!(ctx.locate(&c).unwrap().meta.owner, WorkerId(survivor));
    }
}

/// What the caller put comes back from its replica: as it was put at once, and with the
/// writes since replayed over a copy of it.
#[test]
fn a_chunk_put_by_the_caller_comes_back_from_its_replica() {
    let ctx = context(3, true);
    let kept = ctx.put_on(WorkerId(1), value_chunk(5), false).unwrap();
    let written = ctx.put_on(WorkerId(1), value_chunk(7), false).unwrap();
    affine(&ctx, &written, &kept, [2, 1], 1); // 19
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    assert_eq!(value_of(&ctx.fetch(&kept).unwrap()), 5);
    assert_eq!(value_of(&ctx.fetch(&written).unwrap()), 19);
    assert_eq!(ctx.locate(&kept).unwrap().meta.owner, WorkerId(2));
    // Without replicas it is lost, and says so.
    let ctx = context(3, false);
    let lone = ctx.put_on(WorkerId(1), value_chunk(5), false).unwrap();
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    let e = ctx.fetch(&lone).unwrap_err();
    assert_eq!(e.to_string(), format!("{} was lost with worker 1", lone.id));
    let rebuilt = ctx.take_notices().pop().unwrap();
    assert!(
        matches!(
            rebuilt,
            Notice::Rebuilt {
                chunks: 0,
                failed: 1,
                ..
            }
        ),
        "{rebuilt}"
    );
    assert!(rebuilt.to_string().contains("1 could not be"), "{rebuilt}");
}

/// A table made from data the caller put and then freed (a `CREATE TABLE AS` over `VALUES`)
/// is rebuilt from the replica, kept as long as the lineage of a live chunk reads it.
#[test]
fn a_replica_outlives_its_chunk_while_lineage_reads_it() {
    let ctx = context(3, true);
    let x = ctx.put_on(WorkerId(0), value_chunk(4), false).unwrap();
    let y = add(&ctx, &[&x], 1, 2);
    ctx.free(std::slice::from_ref(&x)).unwrap();
    ctx.wait_idle().unwrap();
    let held = |ctx: &Context| -> usize { ctx.worker_status().iter().map(|w| w.chunks).sum() };
    assert_eq!(held(&ctx), 2, "y, and x's replica");
    ctx.remove_worker(WorkerId(2), "killed by test").unwrap();
    assert_eq!(value_of(&ctx.fetch(&y).unwrap()), 5);
    ctx.free(&[y]).unwrap();
    ctx.wait_idle().unwrap();
    assert_eq!(
        held(&ctx),
        0,
        "the replica goes with the last lineage that read it"
    );
}

/// Lost chunks are rebuilt when the loss is seen, before anyone asks for them; a task that
/// needs one while it is rebuilt waits for it.
#[test]
fn lost_chunks_are_rebuilt_in_the_background_and_readers_wait_for_them() {
    let ctx = context(2, false);
    let x = ctx.put_on(WorkerId(0), value_chunk(1), false).unwrap();
    let outs: Vec<ChunkRef> = (0..4).map(|k| add(&ctx, &[&x], k, 1)).collect();
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    let reader = ctx.spawn(
        "add",
        outs.iter().map(Arg::read).collect(),
        TaskOptions::new().params_json(&[0]).unwrap(),
    );
    assert_eq!(value_of(&reader.fetch().unwrap()[0]), 4 + 6);
    ctx.wait_idle().unwrap();
    for c in &outs {
        let e = ctx.locate(c).unwrap();
        assert!(!e.lost && e.meta.owner == WorkerId(0), "{e:?}");
    }
    assert_eq!(recomputed(&ctx), 4);
    // One line for the loss, one for the rebuild.
    let notices = ctx.take_notices();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(
        matches!(&notices[0], Notice::WorkerLost { worker, chunks: 4, reason }
            if *worker == WorkerId(1) && reason == "killed by test"),
        "{}",
        notices[0]
    );
    assert!(
        matches!(&notices[1], Notice::Rebuilt { worker, chunks: 4, failed: 0, .. }
            if *worker == WorkerId(1)),
        "{}",
        notices[1]
    );
    assert!(ctx.take_notices().is_empty(), "taken");
}
