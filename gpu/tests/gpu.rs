//! The GPU backend against DataFusion: on the host emulator always, on a GPU when there is one
//! (skipped with a message otherwise; `DIRK_REQUIRE_GPU=1` makes a missing GPU a failure).

mod kernels;

use std::sync::OnceLock;

use datafusion::arrow::array::RecordBatch;
use dirk_gpu::{Device, DeviceBatch, GpuAggregate, GpuError, GpuFilter};
use kernels::*;
use proptest::prelude::*;

fn shared_emulator() -> &'static Device {
    static EMULATOR: OnceLock<Device> = OnceLock::new();
    EMULATOR.get_or_init(emulator)
}

fn filters(device: &Device, batch: &RecordBatch) {
    for p in PREDICATES {
        // Only a division or a narrowing cast may send a filter to the CPU.
        let may_need_cpu = p.contains('/') || p.contains("CAST(x AS INT)") || p.contains("CAST(b");
        assert!(
            check_filter(device, batch, p) || may_need_cpu,
            "{p}: the GPU did not answer"
        );
    }
}

fn aggregates(device: &Device, batch: &RecordBatch) {
    for q in AGGREGATES {
        assert!(
            check_aggregate(device, batch, q) >= 1,
            "{q}: no strategy answered"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn filters_match_datafusion_on_the_host_emulator(batch in batch_strategy(200)) {
        filters(shared_emulator(), &batch);
    }

    #[test]
    fn aggregates_match_datafusion_on_the_host_emulator(batch in batch_strategy(200)) {
        aggregates(shared_emulator(), &batch);
    }
}

/// Batches at the edges: empty, one row, all NULL, and large enough for several compaction
/// chunks and emulated blocks.
fn edge_batches() -> Vec<RecordBatch> {
    let runner_rows = |n: usize, seed: u64| {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed as u8; 32]),
        );
        batch_strategy(n + 5)
            .new_tree(&mut runner)
            .unwrap()
            .current()
    };
    let all_null = batch_of(&[(None, None, None, None, None, None, None, None); 3]);
    vec![
        batch_of(&[]),
        batch_of(&[(
            Some(1),
            Some(2),
            Some(f64::NAN),
            Some(-0.0),
            Some(3),
            Some(true),
            Some(4),
            Some(5),
        )]),
        all_null,
        runner_rows(40_000, 7),
    ]
}

#[test]
fn edge_batches_on_the_host_emulator() {
    for batch in edge_batches() {
        filters(shared_emulator(), &batch);
        aggregates(shared_emulator(), &batch);
    }
}

#[test]
fn division_by_zero_sends_the_filter_to_the_cpu() {
    let batch = batch_of(&[(Some(0), Some(5), None, None, None, None, None, None)]);
    // DataFusion fails this query; the GPU must not answer it.
    assert!(!check_filter(shared_emulator(), &batch, "b / a > 1"));
    let batch = batch_of(&[(None, Some(5), Some(1e12), None, None, None, None, None)]);
    assert!(!check_filter(
        shared_emulator(),
        &batch,
        "CAST(x AS INT) > 2"
    ));
}

#[test]
fn expressions_outside_the_subset_are_reported_unsupported() {
    let batch = batch_of(&[(Some(1), Some(2), None, None, None, None, Some(1), None)]);
    for p in [
        "a % 2 = 0",
        "a::VARCHAR LIKE '1%'",
        "CASE WHEN a > 0 THEN true ELSE false END",
    ] {
        let (_, expr) = datafusion_filter(&batch, p);
        match GpuFilter::lower(&expr, &batch.schema()) {
            Err(GpuError::Unsupported(what)) => assert!(!what.is_empty()),
            other => panic!("{p}: expected unsupported, got {other:?}"),
        }
    }
    let ctx = context(&batch);
    let rt = runtime();
    for q in [
        "SELECT median(a) FROM t",
        "SELECT x, count(*) FROM t GROUP BY x",
        "SELECT a + 1, count(*) FROM t GROUP BY a + 1",
        "SELECT sum(x) FILTER (WHERE a > 0) FROM t",
        "SELECT k, max(x) FROM t GROUP BY k",
    ] {
        let df = rt.block_on(ctx.sql(q)).unwrap();
        let plan = rt.block_on(df.create_physical_plan()).unwrap();
        let found = GpuAggregate::find_partial(&plan)
            .map(|partial| GpuAggregate::from_plan(&partial, &batch.schema()));
        match found {
            Some(Err(GpuError::Unsupported(_))) => {}
            other => panic!("{q}: expected unsupported, got {other:?}"),
        }
    }
}

/// Threads that ask one emulator for the same kernel at once share one build: before, each
/// compiled into the same `.so` path while another `dlopen`ed it ("dlopen failed" in CI).
#[test]
fn threads_asking_for_the_same_kernel_at_once_share_one_build() {
    let batch = batch_of(
        &[(
            Some(1),
            Some(2),
            Some(0.5),
            None,
            Some(3),
            None,
            Some(1),
            None,
        ); 50],
    );
    for round in 0..3 {
        let device = emulator();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    assert!(
                        check_filter(&device, &batch, "NOT (a > 0 OR x > 0) AND y < 2"),
                        "round {round}: the emulator did not answer"
                    );
                });
            }
        });
    }
}

#[test]
fn device_memory_is_accounted_and_exhaustion_is_an_error() {
    let device = Device::host_emulator(4096).unwrap();
    let small = batch_of(&[(Some(1), Some(2), None, None, None, None, None, None); 10]);
    let resident = DeviceBatch::upload(&device, &small).unwrap();
    let used = device.memory().used();
    assert!(used >= resident.device_bytes() && used > 0);
    let big = edge_batches().pop().unwrap();
    let err = DeviceBatch::upload(&device, &big).unwrap_err();
    assert!(matches!(err, GpuError::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().starts_with("out of GPU memory"));
    drop(resident);
    assert_eq!(
        device.memory().used(),
        0,
        "freed buffers give their memory back"
    );
}

#[test]
fn columns_round_trip_through_device_memory() {
    for batch in edge_batches() {
        for offset in [0, 1, 3] {
            let offset = offset.min(batch.num_rows());
            let sliced = batch.slice(offset, batch.num_rows() - offset);
            let resident = DeviceBatch::upload(shared_emulator(), &sliced).unwrap();
            assert_eq!(resident.download(shared_emulator()).unwrap(), sliced);
        }
    }
}

// The same bodies on a GPU.

#[test]
fn filters_and_aggregates_match_datafusion_on_the_gpu() {
    let Some(gpu) = gpu_or_skip("filters_and_aggregates_match_datafusion_on_the_gpu") else {
        return;
    };
    for batch in edge_batches() {
        let resident = DeviceBatch::upload(&gpu, &batch).unwrap();
        assert_eq!(resident.download(&gpu).unwrap(), batch);
        filters(&gpu, &batch);
        aggregates(&gpu, &batch);
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(32));
    runner
        .run(&batch_strategy(300), |batch| {
            filters(&gpu, &batch);
            aggregates(&gpu, &batch);
            Ok(())
        })
        .unwrap();
}

#[test]
fn gpu_memory_exhaustion_is_an_error() {
    let Some(gpu) = gpu_or_skip("gpu_memory_exhaustion_is_an_error") else {
        return;
    };
    let limit = gpu.memory().limit();
    let err = gpu.alloc_zeroed(limit + 1).unwrap_err();
    assert!(matches!(err, GpuError::OutOfMemory { .. }), "{err}");
}
