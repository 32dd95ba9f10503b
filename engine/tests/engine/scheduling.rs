//! Tasks through the scheduler: results, errors, cancellation, ordering, scopes, locality, loss.

use super::common::{context, register, sized_chunk, value_chunk, value_of};
use arrow::array::ArrayRef;
use dirk_engine::{
    Arg, Chunk, Context, EngineError, FnKernel, ProcessorId, ProcessorKind, Scope, TaskOptions,
    TaskStatus, WorkerId,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn k(v: i64) -> TaskOptions {
    TaskOptions::new().params_json(&[v]).unwrap()
}

#[test]
fn a_graph_of_tasks_computes_its_result() {
    let (ctx, _) = context(3);
    let leaves: Vec<_> = (0..6)
        .map(|i| {
            let c = ctx.put(value_chunk(i)).unwrap();
            ctx.spawn("add", vec![Arg::read(&c)], k(1))
        })
        .collect();
    let args = leaves.iter().map(|h| Arg::output(h, 0)).collect();
    let root = ctx.spawn("add", args, k(0));
    // (0+1) + (1+1) + ... + (5+1) = 21
    assert_eq!(value_of(&root.fetch().unwrap()[0]), 21);
    let out = root.wait().unwrap();
    assert_eq!(out.chunks.len(), 1);
    assert_eq!(out.chunks[0].rows, 1);
}

#[test]
fn a_failure_names_the_task_that_failed_first() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(1)).unwrap();
    let bad = ctx.spawn("fail", vec![Arg::read(&c)], TaskOptions::new());
    let mid = ctx.spawn("add", vec![Arg::output(&bad, 0)], k(0));
    let last = ctx.spawn("add", vec![Arg::output(&mid, 0)], k(0));
    match bad.wait() {
        Err(EngineError::KernelFailed {
            task,
            kernel,
            message,
            ..
        }) => {
            assert_eq!(task, bad.id());
            assert_eq!(kernel, "fail");
            assert!(message.contains("deliberate failure"));
        }
        other => panic!("unexpected {other:?}"),
    }
    for h in [&mid, &last] {
        match h.wait() {
            Err(EngineError::UpstreamFailed {
                task,
                failed,
                cause,
                ..
            }) => {
                assert_eq!(task, h.id());
                assert_eq!(failed, bad.id());
                assert!(cause.contains("deliberate failure"), "{cause}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A task spawned after the failure is known fails the same way, at once.
    let late = ctx.spawn("add", vec![Arg::output(&mid, 0)], k(0));
    assert!(
        matches!(late.wait(), Err(EngineError::UpstreamFailed { failed, .. }) if failed == bad.id())
    );
    // The context is still usable.
    let ok = ctx.spawn("add", vec![Arg::read(&c)], k(1));
    assert_eq!(value_of(&ok.fetch().unwrap()[0]), 2);
}

#[test]
fn panics_and_unknown_kernels_are_errors_not_crashes() {
    let (ctx, _) = context(2);
    let p = ctx.spawn("panic", vec![], TaskOptions::new());
    let err = p.wait().unwrap_err().to_string();
    assert!(err.contains("deliberate panic"), "{err}");
    let u = ctx.spawn("no_such_kernel", vec![], TaskOptions::new());
    let err = u.wait().unwrap_err().to_string();
    assert!(err.contains("unknown kernel `no_such_kernel`"), "{err}");
    let ok = ctx.spawn("noop", vec![], TaskOptions::new());
    assert!(ok.wait().is_ok());
}

#[test]
fn cancelling_a_running_task_cancels_its_dependents() {
    let (ctx, _) = context(2);
    let slow = ctx.spawn("sleep", vec![], k(10_000));
    let dep = ctx.spawn("noop", vec![], TaskOptions::new().after(&slow));
    let dep2 = ctx.spawn("noop", vec![], TaskOptions::new().after(&dep));
    let independent = ctx.spawn("noop", vec![], TaskOptions::new());
    // Wait until the slow task is running.
    let t0 = Instant::now();
    while ctx.worker_status().iter().all(|s| s.running == 0) {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    slow.cancel();
    assert!(matches!(slow.wait(), Err(EngineError::Cancelled { task }) if task == slow.id()));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the kernel saw the cancellation"
    );
    assert!(matches!(dep.wait(), Err(EngineError::Cancelled { .. })));
    assert!(matches!(dep2.wait(), Err(EngineError::Cancelled { .. })));
    assert!(independent.wait().is_ok());
}

#[test]
fn cancelling_a_waiting_task_leaves_its_upstream_alone() {
    let (ctx, _) = context(2);
    let first = ctx.spawn("sleep", vec![], k(50));
    let second = ctx.spawn("noop", vec![], TaskOptions::new().after(&first));
    second.cancel();
    assert!(matches!(second.wait(), Err(EngineError::Cancelled { .. })));
    assert!(first.wait().is_ok());
}

#[test]
fn sequential_queue_runs_in_submission_order() {
    let (ctx, list) = context(4);
    let mut q = ctx.sequential();
    let mut last = None;
    for n in 0..200 {
        last = Some(q.spawn("log", vec![], k(n)));
    }
    last.unwrap().wait().unwrap();
    assert_eq!(*list.lock(), (0..200).collect::<Vec<_>>());
}

#[test]
fn without_order_tasks_spread_over_workers() {
    let (ctx, _) = context(4);
    let hs: Vec<_> = (0..64).map(|_| ctx.spawn("sleep", vec![], k(2))).collect();
    for h in &hs {
        h.wait().unwrap();
    }
    let log = ctx.event_log();
    let mut workers: Vec<_> = log.records.iter().filter_map(|r| r.worker).collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 4, "load spreads tasks over every worker");
}

#[test]
fn empty_scope_is_an_immediate_clear_error() {
    let (ctx, _) = context(2);
    let pinned = ctx.put_on(WorkerId(0), value_chunk(1), true).unwrap();
    let h = ctx.spawn(
        "copy",
        vec![Arg::read(&pinned)],
        TaskOptions::new().scope(Scope::worker(WorkerId(1))),
    );
    match h.try_result().or_else(|| Some(h.wait())) {
        Some(Err(EngineError::EmptyScope { detail, .. })) => {
            assert!(detail.contains("pinned to worker 0"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let nowhere = ctx.spawn(
        "noop",
        vec![],
        TaskOptions::new().scope(Scope::processor(ProcessorKind::Gpu(0))),
    );
    assert!(matches!(
        nowhere.wait(),
        Err(EngineError::EmptyScope { .. })
    ));
}

#[test]
fn pinned_inputs_keep_tasks_on_their_worker() {
    let (ctx, _) = context(3);
    let pinned = ctx.put_on(WorkerId(2), value_chunk(7), true).unwrap();
    let hs: Vec<_> = (0..30)
        .map(|_| ctx.spawn("copy", vec![Arg::read(&pinned)], TaskOptions::new()))
        .collect();
    for h in &hs {
        assert_eq!(value_of(&h.fetch().unwrap()[0]), 7);
    }
    let log = ctx.event_log();
    assert!(log.records.iter().all(|r| r.worker == Some(WorkerId(2))));
    assert_eq!(log.bytes_moved_between_workers(), 0);
}

#[test]
fn scopes_pick_processor_kinds() {
    let ctx = Context::builder()
        .workers(2)
        .fake_processors(1)
        .build()
        .unwrap();
    super::common::register(&ctx);
    let fake = ProcessorKind::Fake(0);
    let hs: Vec<_> = (0..20)
        .map(|_| {
            ctx.spawn(
                "noop",
                vec![],
                TaskOptions::new().scope(Scope::processor(fake)),
            )
        })
        .collect();
    let exact = ProcessorId {
        worker: WorkerId(1),
        kind: ProcessorKind::Cpu,
    };
    let e = ctx.spawn(
        "noop",
        vec![],
        TaskOptions::new().scope(Scope::exact(exact)),
    );
    for h in &hs {
        h.wait().unwrap();
    }
    e.wait().unwrap();
    let log = ctx.event_log();
    for r in &log.records {
        if r.task == e.id() {
            assert_eq!(
                (r.worker, r.processor),
                (Some(WorkerId(1)), Some(ProcessorKind::Cpu))
            );
        } else {
            assert_eq!(r.processor, Some(fake));
        }
    }
}

#[test]
fn big_inputs_draw_tasks_to_their_owner_and_moves_are_counted() {
    let (ctx, _) = context(2);
    let big = ctx
        .put_on(WorkerId(1), sized_chunk(1_000_000), false)
        .unwrap();
    let h = ctx.spawn("copy", vec![Arg::read(&big)], TaskOptions::new());
    h.wait().unwrap();
    let log = ctx.event_log();
    assert_eq!(
        log.records[0].worker,
        Some(WorkerId(1)),
        "8 MB input stays put"
    );
    assert_eq!(log.bytes_moved_between_workers(), 0);

    // Forced elsewhere by scope, the input moves, and the move is counted.
    let h = ctx.spawn(
        "copy",
        vec![Arg::read(&big)],
        TaskOptions::new().scope(Scope::worker(WorkerId(0))),
    );
    h.wait().unwrap();
    let log = ctx.event_log();
    // A move carries the chunk's values (8 bytes per row), not its allocations' capacity.
    let values = sized_chunk(1_000_000).data_bytes();
    assert!(values >= 8_000_000 && values <= big.bytes, "{values}");
    assert_eq!(log.bytes_moved_between_workers(), values);
    let m = log.moved.iter().find(|m| m.to == WorkerId(0)).unwrap();
    assert_eq!((m.from, m.count), (WorkerId(1), 1));
    let rec = log.records.iter().find(|r| r.task == h.id()).unwrap();
    assert_eq!(rec.bytes_moved, values);
}

#[test]
fn in_place_writes_move_ownership_and_keep_the_id() {
    let (ctx, _) = context(2);
    let c = ctx.put_on(WorkerId(0), value_chunk(3), false).unwrap();
    let opts = TaskOptions::new()
        .params_json(&[2i64, 0])
        .unwrap()
        .scope(Scope::worker(WorkerId(1)));
    ctx.spawn("affine", vec![Arg::read_write(&c)], opts)
        .wait()
        .unwrap();
    let entry = ctx.locate(&c).unwrap();
    assert_eq!(entry.meta.owner, WorkerId(1));
    assert_eq!(value_of(&ctx.fetch(&c).unwrap()), 6);
    let status = ctx.worker_status();
    assert_eq!(status[0].chunks, 0, "the stale copy was dropped");
}

#[test]
fn a_lost_worker_fails_what_needed_it_and_the_rest_goes_on() {
    let (ctx, _) = context(3);
    let on_lost = ctx.put_on(WorkerId(1), value_chunk(1), false).unwrap();
    let elsewhere = ctx.put_on(WorkerId(0), value_chunk(2), false).unwrap();
    ctx.wait_idle().unwrap();
    ctx.remove_worker(WorkerId(1), "killed by test").unwrap();
    let h = ctx.spawn("copy", vec![Arg::read(&on_lost)], TaskOptions::new());
    assert!(
        matches!(h.wait(), Err(EngineError::ChunkLost { worker, .. }) if worker == WorkerId(1))
    );
    let hs: Vec<_> = (0..20)
        .map(|_| ctx.spawn("copy", vec![Arg::read(&elsewhere)], TaskOptions::new()))
        .collect();
    for h in &hs {
        assert_eq!(value_of(&h.fetch().unwrap()[0]), 2);
    }
    let log = ctx.event_log();
    assert!(log.records.iter().all(|r| r.worker != Some(WorkerId(1))));
    assert_eq!(ctx.workers(), vec![WorkerId(0), WorkerId(2)]);
}

#[test]
fn lineage_names_the_task_that_made_a_chunk() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(1)).unwrap();
    assert_eq!(ctx.locate(&c).unwrap().lineage, dirk_engine::Lineage::Put);
    let h = ctx.spawn("copy", vec![Arg::read(&c)], TaskOptions::new());
    let out = &h.wait().unwrap().chunks[0];
    assert_eq!(
        ctx.locate(out).unwrap().lineage,
        dirk_engine::Lineage::Task {
            task: h.id(),
            kernel: "copy".into()
        }
    );
}

#[test]
fn freed_chunks_leave_their_stores() {
    let (ctx, _) = context(2);
    let c = ctx.put_on(WorkerId(0), sized_chunk(1000), false).unwrap();
    assert_eq!(ctx.worker_status()[0].chunks, 1);
    ctx.free(std::slice::from_ref(&c)).unwrap();
    ctx.wait_idle().unwrap();
    assert_eq!(ctx.worker_status()[0].chunks, 0);
    let h = ctx.spawn("copy", vec![Arg::read(&c)], TaskOptions::new());
    assert!(matches!(h.wait(), Err(EngineError::InvalidArgument { .. })));
}

/// A free waits for the tasks submitted before it that read the chunk: they see their data.
#[test]
fn a_free_waits_for_earlier_readers() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(7)).unwrap();
    let slow = ctx.spawn("sleep", vec![], k(200));
    let reader = ctx.spawn("copy", vec![Arg::read(&c)], TaskOptions::new().after(&slow));
    ctx.free(std::slice::from_ref(&c)).unwrap();
    assert_eq!(value_of(&reader.fetch().unwrap()[0]), 7);
    ctx.wait_idle().unwrap();
    assert_eq!(
        ctx.fetch(&c).unwrap_err(),
        EngineError::UnknownChunk { chunk: c.id }
    );
}

/// A task that reads another's output before that task has finished names the output, not
/// its chunk; once both have finished, the chunk must still be freeable (it once stayed "in
/// use" for ever, and every multi-stage query left its intermediate chunks behind).
#[test]
fn an_output_read_before_it_existed_can_be_freed_after_its_readers_finish() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(7)).unwrap();
    let slow = ctx.spawn("sleep", vec![], k(100));
    let producer = ctx.spawn("copy", vec![Arg::read(&c)], TaskOptions::new().after(&slow));
    let reader = ctx.spawn("copy", vec![Arg::output(&producer, 0)], TaskOptions::new());
    assert_eq!(value_of(&reader.fetch().unwrap()[0]), 7);
    let made = producer.wait().unwrap().chunks;
    let read = reader.wait().unwrap().chunks;
    ctx.free(&[made, read, vec![c]].concat()).unwrap();
    ctx.wait_idle().unwrap();
    let held: usize = ctx.worker_status().iter().map(|w| w.chunks).sum();
    assert_eq!(held, 0, "every chunk was freed");
}

#[test]
fn shutdown_fails_unfinished_tasks_instead_of_hanging() {
    let (ctx, _) = context(1);
    let slow = ctx.spawn("sleep", vec![], k(200));
    let after = ctx.spawn("noop", vec![], TaskOptions::new().after(&slow));
    drop(ctx);
    assert!(matches!(after.wait(), Err(EngineError::Shutdown)));
}

#[test]
fn handles_can_be_awaited() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(4)).unwrap();
    let h = ctx.spawn("add", vec![Arg::read(&c)], k(1));
    let out = block_on(h.join()).unwrap();
    assert_eq!(out.task, h.id());
    let recs = ctx.event_log();
    assert!(recs
        .records
        .iter()
        .any(|r| r.task == h.id() && r.status == TaskStatus::Ok));
}

/// A minimal executor: polls a future on this thread, parking between wake-ups.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context as Cx, Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Cx::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn spawn_waits_while_too_many_tasks_are_unfinished() {
    let ctx = Context::builder()
        .workers(2)
        .max_outstanding_tasks(4)
        .build()
        .unwrap();
    super::common::register(&ctx);
    let first: Vec<_> = (0..4).map(|_| ctx.spawn("sleep", vec![], k(30))).collect();
    // The bound is reached: this spawn returns only after the backlog has drained a little.
    let fifth = ctx.spawn("noop", vec![], TaskOptions::new());
    assert!(
        first.iter().any(|h| h.is_finished()),
        "spawn did not wait for the backlog"
    );
    fifth.wait().unwrap();
    // Many more tasks than the bound all complete.
    let hs: Vec<_> = (0..500)
        .map(|_| ctx.spawn("noop", vec![], TaskOptions::new()))
        .collect();
    for h in hs {
        h.wait().unwrap();
    }
}

#[test]
fn a_chunk_written_and_read_by_one_task_is_refused() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(1)).unwrap();
    let h = ctx.spawn("affine", vec![Arg::read_write(&c), Arg::read(&c)], k(1));
    let err = h.wait().unwrap_err().to_string();
    assert!(err.contains("passed twice"), "{err}");
    // Reading it twice is fine.
    let ok = ctx.spawn("add", vec![Arg::read(&c), Arg::read(&c)], k(0));
    assert_eq!(value_of(&ok.fetch().unwrap()[0]), 2);
}

#[test]
fn fetching_an_unknown_chunk_is_a_clear_error() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(1)).unwrap();
    ctx.free(std::slice::from_ref(&c)).unwrap();
    let err = ctx.fetch(&c).unwrap_err();
    assert_eq!(err, EngineError::UnknownChunk { chunk: c.id });
    assert_eq!(err.to_string(), format!("unknown {}", c.id));
}

/// Forty slow tasks read one 16 MB chunk on worker 0. Placement queues them there (moving the
/// chunk looks dearer than a short queue while the kernel's run time is unknown); once the
/// tasks turn out slow, the idle worker 1 steals some, because moving 16 MB now costs less than
/// the wait. With a link too slow to make the move worth it, nothing is stolen.
fn steal_run(model: dirk_engine::placement::CostModel) -> (usize, u64) {
    let ctx = Context::builder()
        .workers(2)
        .cost_model(model)
        .build()
        .unwrap();
    super::common::register(&ctx);
    ctx.register_kernel(dirk_engine::FnKernel::new("slow_read", |call| {
        let _rows = call.input(0).rows();
        std::thread::sleep(Duration::from_millis(5));
        Ok(vec![])
    }));
    let big = ctx
        .put_on(WorkerId(0), sized_chunk(2_000_000), false)
        .unwrap();
    let hs: Vec<_> = (0..40)
        .map(|_| ctx.spawn("slow_read", vec![Arg::read(&big)], TaskOptions::new()))
        .collect();
    for h in &hs {
        h.wait().unwrap();
    }
    let log = ctx.event_log();
    let on_w1 = log
        .records
        .iter()
        .filter(|r| r.worker == Some(WorkerId(1)))
        .count();
    (on_w1, log.bytes_moved_between_workers())
}

#[test]
fn idle_workers_steal_queued_work_when_moving_its_inputs_is_cheap() {
    let fast = dirk_engine::placement::CostModel {
        bandwidth_bytes_per_s: 1e9, // 16 MB: 16 ms to move, less than the queue's wait
        ..Default::default()
    };
    let (stolen, moved) = steal_run(fast);
    assert!(stolen > 0, "worker 1 stole nothing");
    assert!(
        moved >= 16_000_000,
        "each stolen task moved the chunk ({moved} bytes)"
    );

    let slow = dirk_engine::placement::CostModel {
        bandwidth_bytes_per_s: 1e6, // 16 s to move: never worth it
        ..Default::default()
    };
    let (stolen, moved) = steal_run(slow);
    assert_eq!((stolen, moved), (0, 0));
}

/// Every query fragment is one kernel, so its history mixes tasks over a few rows with tasks over
/// hundreds of megabytes. The estimate must scale with a task's inputs: priced at the kernel's
/// mean (here, that of many tiny tasks), two big tasks over inputs on one worker would both
/// queue there rather than move a few megabytes, and run one after the other.
#[test]
fn a_task_is_estimated_by_the_bytes_it_reads_so_big_tasks_spread() {
    let ctx = Context::builder()
        .workers(2)
        .threads_per_worker(1)
        .build()
        .unwrap();
    register(&ctx);
    // 20 ms per MB read: a big input takes long, a one-row input no time at all.
    ctx.register_kernel(FnKernel::new("scan", |call| {
        let bytes: u64 = call.inputs().iter().map(|i| i.chunk.data_bytes()).sum();
        std::thread::sleep(Duration::from_micros(bytes / 50));
        Ok(vec![value_chunk(1)])
    }));
    let on_1 = |chunk| ctx.put_on(WorkerId(1), chunk, false).unwrap();
    // History: one big task, then many tiny ones that pull the mean run time down to nothing.
    let warm = ctx.spawn(
        "scan",
        vec![Arg::read(&on_1(sized_chunk(500_000)))],
        TaskOptions::new(),
    );
    warm.wait().unwrap();
    for _ in 0..30 {
        let tiny = on_1(value_chunk(0));
        ctx.spawn("scan", vec![Arg::read(&tiny)], TaskOptions::new())
            .wait()
            .unwrap();
    }
    ctx.clear_event_log();
    // Two 4 MB inputs on worker 1: 80 ms of work each, 4 ms to move one at the model's 1 GB/s.
    let (a, b) = (on_1(sized_chunk(500_000)), on_1(sized_chunk(500_000)));
    let ha = ctx.spawn("scan", vec![Arg::read(&a)], TaskOptions::new());
    let hb = ctx.spawn("scan", vec![Arg::read(&b)], TaskOptions::new());
    ha.wait().unwrap();
    hb.wait().unwrap();
    let log = ctx.event_log();
    let mut workers: Vec<_> = log.records.iter().map(|r| r.worker).collect();
    workers.sort();
    assert_eq!(workers, vec![Some(WorkerId(0)), Some(WorkerId(1))]);
}

/// A hash split of a batch keeps every data buffer of a string-view column in each part. A part's
/// size, which prices moving it, counts the views and the bytes they point at, not the shared
/// buffers: else every part of a split would look as big as the whole input.
#[test]
fn a_split_of_a_string_view_column_counts_only_its_own_strings() {
    use arrow::array::{RecordBatch, StringViewArray, UInt32Array};
    let strings: StringViewArray = (0..10_000)
        .map(|i| Some(format!("a string longer than twelve bytes, number {i:05}")))
        .collect();
    let whole = RecordBatch::try_from_iter([("s", Arc::new(strings) as ArrayRef)]).unwrap();
    let part =
        arrow::compute::take_record_batch(&whole, &UInt32Array::from(vec![1, 5, 9])).unwrap();
    let (whole, part) = (Chunk::from_batch(whole), Chunk::from_batch(part));
    assert!(whole.data_bytes() > 400_000, "{}", whole.data_bytes());
    // Three views of 16 bytes and three strings of 47 bytes.
    assert_eq!(part.data_bytes(), 3 * 16 + 3 * 47);
    // The memory the part holds is still the shared buffers.
    assert!(part.bytes() > 400_000);
}

#[test]
fn a_failure_keeps_its_kind_and_names_its_task_and_worker() {
    use dirk_engine::ErrorKind;
    let (ctx, _) = context(2);
    ctx.register_kernel(FnKernel::new("flaky", |_call| {
        Err(EngineError::retryable("storage timed out"))
    }));
    let c = ctx.put(value_chunk(1)).unwrap();
    // A kernel's own failure is the user's; a panic is Dirk's; a retryable one stays retryable,
    // and so does everything downstream of it.
    for (kernel, kind) in [
        ("fail", ErrorKind::User),
        ("panic", ErrorKind::Internal),
        ("flaky", ErrorKind::Retryable),
    ] {
        let bad = ctx.spawn(kernel, vec![Arg::read(&c)], TaskOptions::new());
        let after = ctx.spawn("add", vec![Arg::output(&bad, 0)], k(0));
        let e = bad.wait().unwrap_err();
        assert_eq!(e.kind(), kind, "{kernel}: {e:?}");
        assert_eq!(e.task(), Some(bad.id()), "{e:?}");
        assert!(
            e.worker().is_some_and(|w| ctx.workers().contains(&w)),
            "{e:?}"
        );
        let e = after.wait().unwrap_err();
        assert_eq!(e.kind(), kind, "{kernel} downstream: {e:?}");
        assert_eq!(kind.is_retryable(), kernel == "flaky");
    }
    let lost = EngineError::WorkerLost {
        worker: WorkerId(1),
        reason: "no heartbeat".into(),
    };
    assert_eq!(lost.kind(), ErrorKind::Retryable);
    assert_eq!(lost.worker(), Some(WorkerId(1)));
}
