//! Kernels and helpers shared by the engine tests.

use arrow::array::{Array, Int64Array, RecordBatch};
use dirk_engine::{Chunk, Context, EngineError, FnKernel};
use std::sync::Arc;
use std::time::Duration;

/// A one-row, one-column chunk holding `v`.
pub(crate) fn value_chunk(v: i64) -> Chunk {
    let a: Int64Array = vec![v].into();
    Chunk::from_batch(RecordBatch::try_from_iter([("v", Arc::new(a) as Arc<dyn Array>)]).unwrap())
}

/// A chunk of `rows` rows.
pub(crate) fn sized_chunk(rows: usize) -> Chunk {
    let a: Int64Array = (0..rows as i64).collect::<Vec<_>>().into();
    Chunk::from_batch(RecordBatch::try_from_iter([("v", Arc::new(a) as Arc<dyn Array>)]).unwrap())
}

/// The value of a chunk made by `value_chunk`.
pub(crate) fn value_of(c: &Chunk) -> i64 {
    c.batches()[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Sleeps a little, varying by task, so that tasks finish in scrambled order.
fn jitter(task: u64) {
    let us = (task.wrapping_mul(7919) % 4) * 150;
    if us > 0 {
        std::thread::sleep(Duration::from_micros(us));
    }
}

/// A context with the test kernels registered:
/// - `copy`: output = input 0;
/// - `affine` (params `[a, b]`): input 0 (read-write) := a * in0 + b * in1 (wrapping);
/// - `set` (params `[c]`): input 0 (write) := c;
/// - `add` (params `[k]`): output = sum of inputs + k;
/// - `fail`: always fails; `panic`: panics;
/// - `sleep` (params `[ms]`): sleeps, stopping early when cancelled;
/// - `log` (params `[n]`): appends n to a shared list, returned as the second value.
pub(crate) fn context(workers: usize) -> (Context, Arc<parking_lot::Mutex<Vec<i64>>>) {
    let ctx = Context::builder().workers(workers).build().unwrap();
    let list = register(&ctx);
    (ctx, list)
}

pub(crate) fn register(ctx: &Context) -> Arc<parking_lot::Mutex<Vec<i64>>> {
    ctx.register_kernel(FnKernel::new("copy", |call| {
        jitter(call.task.0);
        Ok(vec![value_chunk(value_of(call.input(0)))])
    }));
    ctx.register_kernel(FnKernel::new("affine", |call| {
        jitter(call.task.0);
        let [a, b]: [i64; 2] = call.params_json()?;
        let other = if call.num_inputs() > 1 {
            value_of(call.input(1))
        } else {
            0
        };
        let v = a
            .wrapping_mul(value_of(call.input(0)))
            .wrapping_add(b.wrapping_mul(other));
        *call.input_mut(0)? = Arc::new(value_chunk(v));
        Ok(vec![])
    }));
    ctx.register_kernel(FnKernel::new("set", |call| {
        jitter(call.task.0);
        let [c]: [i64; 1] = call.params_json()?;
        *call.input_mut(0)? = Arc::new(value_chunk(c));
        Ok(vec![])
    }));
    ctx.register_kernel(FnKernel::new("add", |call| {
        let [k]: [i64; 1] = call.params_json()?;
        let s: i64 = call.inputs().iter().map(|i| value_of(&i.chunk)).sum();
        Ok(vec![value_chunk(s + k)])
    }));
    ctx.register_kernel(FnKernel::new("fail", |_call| {
        Err(EngineError::kernel("deliberate failure"))
    }));
    ctx.register_kernel(FnKernel::new(
        "panic",
        |_call| -> dirk_engine::Result<Vec<Chunk>> { panic!("deliberate panic") },
    ));
    ctx.register_kernel(FnKernel::new("sleep", |call| {
        let [ms]: [u64; 1] = call.params_json()?;
        let end = std::time::Instant::now() + Duration::from_millis(ms);
        while std::time::Instant::now() < end {
            if call.is_cancelled() {
                return Err(EngineError::kernel("stopped"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(vec![])
    }));
    let list = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l = list.clone();
    ctx.register_kernel(FnKernel::new("log", move |call| {
        jitter(call.task.0);
        let [n]: [i64; 1] = call.params_json()?;
        l.lock().push(n);
        Ok(vec![])
    }));
    list
}
