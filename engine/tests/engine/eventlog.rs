//! The event log and its exports.

use super::common::{context, value_chunk};
use dirk_engine::{Arg, TaskOptions};

#[test]
fn every_task_is_recorded_and_exported() {
    let (ctx, _) = context(2);
    let c = ctx.put(value_chunk(1)).unwrap();
    let a = ctx.spawn(
        "copy",
        vec![Arg::read(&c)],
        TaskOptions::new().label("scan"),
    );
    let b = ctx.spawn("copy", vec![Arg::output(&a, 0)], TaskOptions::new());
    let f = ctx.spawn("fail", vec![Arg::output(&b, 0)], TaskOptions::new());
    let _ = f.wait();
    ctx.wait_idle().unwrap();
    let log = ctx.event_log();
    assert_eq!(log.records.len(), 3);
    let ra = log.records.iter().find(|r| r.task == a.id()).unwrap();
    assert_eq!(&*ra.name, "scan");
    assert_eq!((ra.rows_in, ra.rows_out), (1, 1));
    assert!(ra.bytes_in > 0 && ra.bytes_out > 0);
    assert!(ra.queued_us <= ra.started_us && ra.started_us <= ra.finished_us);
    let rb = log.records.iter().find(|r| r.task == b.id()).unwrap();
    assert_eq!(rb.deps, vec![a.id()]);

    let trace: serde_json::Value = serde_json::from_str(&log.chrome_trace()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let complete: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(complete.len(), 3);
    assert!(complete.iter().any(|e| e["name"] == "scan"));
    assert!(complete
        .iter()
        .any(|e| e["args"]["status"].as_str().unwrap().starts_with("failed")));

    let dot = log.graphviz();
    assert!(dot.starts_with("digraph"));
    assert!(dot.contains(&format!("t{} -> t{};", a.id().0, b.id().0)));
    assert!(dot.contains(&format!("t{} -> t{};", b.id().0, f.id().0)));

    let summary = log.summary();
    assert!(
        summary.contains("3 tasks (1 failed or cancelled)"),
        "{summary}"
    );

    let dir = std::env::temp_dir().join(format!("dirk-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ctx.write_chrome_trace(&dir.join("t.json")).unwrap();
    ctx.write_graphviz(&dir.join("t.dot")).unwrap();
    assert!(std::fs::metadata(dir.join("t.json")).unwrap().len() > 0);
    let err = ctx
        .write_graphviz(&dir.join("no/such/dir/t.dot"))
        .unwrap_err();
    assert!(err.to_string().starts_with("cannot write"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_log_keeps_a_bounded_number_of_records() {
    let ctx = dirk_engine::Context::builder()
        .workers(2)
        .event_log_capacity(10)
        .build()
        .unwrap();
    for _ in 0..50 {
        ctx.spawn("noop", vec![], TaskOptions::new());
    }
    ctx.wait_idle().unwrap();
    let log = ctx.event_log();
    assert_eq!(log.records.len(), 10);
    assert_eq!(log.dropped_records, 40);
}

#[test]
fn a_record_tells_cpu_time_from_waiting_and_orders_its_times() {
    let (ctx, _) = context(1);
    ctx.register_kernel(dirk_engine::FnKernel::new("spin", |_call| {
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        Ok(vec![])
    }));
    let spin = ctx.spawn("spin", vec![], TaskOptions::new());
    let sleep = ctx.spawn(
        "sleep",
        vec![],
        TaskOptions::new().params_json(&[30u64]).unwrap(),
    );
    spin.wait().unwrap();
    sleep.wait().unwrap();
    ctx.wait_idle().unwrap();
    let log = ctx.event_log();
    let record = |id| log.records.iter().find(|r| r.task == id).unwrap();
    let (spun, slept) = (record(spin.id()), record(sleep.id()));
    for r in [spun, slept] {
        assert!(r.queued_us <= r.dispatched_us, "{r:?}");
        assert!(r.dispatched_us <= r.started_us, "{r:?}");
        assert!(r.started_us <= r.finished_us, "{r:?}");
        assert!(r.finished_us <= r.reported_us, "{r:?}");
    }
    if cfg!(unix) {
        // Spinning for 30 ms uses about 30 ms of CPU; sleeping for 30 ms uses next to none.
        assert!(spun.cpu_us >= 15_000, "{spun:?}");
        assert!(slept.cpu_us < 10_000, "{slept:?}");
        assert!(slept.finished_us - slept.started_us >= 30_000, "{slept:?}");
    }
}
