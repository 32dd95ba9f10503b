//! Spawns a small map/reduce task graph with an in-place update on the engine's in-process
//! workers, then prints the result, the trace summary, and where the trace and graph files went.
//!
//! ```text
//! cargo run -p dirk-examples --example task_graph
//! ```

use arrow::array::{Array, Int64Array, RecordBatch};
use dirk_engine::{Arg, Chunk, Context, EngineError, FnKernel, TaskOptions};
use std::sync::Arc;

fn batch(values: Vec<i64>) -> RecordBatch {
    let a: Int64Array = values.into();
    RecordBatch::try_from_iter([("x", Arc::new(a) as Arc<dyn Array>)]).expect("batch")
}

fn column(c: &Chunk) -> Result<&Int64Array, EngineError> {
    c.batches()[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| EngineError::kernel("expected an int64 column"))
}

fn main() -> Result<(), EngineError> {
    let ctx = Context::builder().build()?;
    println!("{} in-process workers", ctx.workers().len());

    // Kernels are registered by name: a task names its kernel, so the same task can run on any
    // worker, local or remote.
    ctx.register_kernel(FnKernel::new("square", |call| {
        let x = column(call.input(0))?;
        Ok(vec![Chunk::from_batch(batch(
            x.values().iter().map(|v| v * v).collect(),
        ))])
    }));
    ctx.register_kernel(FnKernel::new("sum", |call| {
        let mut total = 0i64;
        for input in call.inputs() {
            total += column(&input.chunk)?.values().iter().sum::<i64>();
        }
        Ok(vec![Chunk::from_batch(batch(vec![total]))])
    }));
    ctx.register_kernel(FnKernel::new("scale_in_place", |call| {
        let factor: f64 = call.params_json()?;
        let chunk = call.input_mut(0)?;
        let x = column(chunk)?;
        let scaled: Vec<i64> = x
            .values()
            .iter()
            .map(|v| (*v as f64 * factor) as i64)
            .collect();
        *chunk = Arc::new(Chunk::from_batch(batch(scaled)));
        Ok(vec![])
    }));

    // Eight partitions, spread over the workers.
    let parts: Vec<_> = (0..8)
        .map(|p| {
            ctx.put(Chunk::from_batch(batch(
                (p * 1000..(p + 1) * 1000).collect(),
            )))
        })
        .collect::<Result<_, _>>()?;

    // Map, then reduce. Each map runs where its partition lives.
    let maps: Vec<_> = parts
        .iter()
        .map(|p| {
            ctx.spawn(
                "square",
                vec![Arg::read(p)],
                TaskOptions::new().label("square"),
            )
        })
        .collect();
    let reduce = ctx.spawn(
        "sum",
        maps.iter().map(|m| Arg::output(m, 0)).collect(),
        TaskOptions::new().label("sum"),
    );

    // An in-place update of partition 0, submitted after the maps: datadeps order it after the
    // map that reads partition 0, so that map still sees the old values.
    let update = ctx.spawn(
        "scale_in_place",
        vec![Arg::read_write(&parts[0])],
        TaskOptions::new().params_json(&2.0f64)?.label("scale"),
    );
    let again = ctx.spawn(
        "sum",
        vec![Arg::read(&parts[0])],
        TaskOptions::new().label("sum p0"),
    );

    let total = column(&reduce.fetch()?[0])?.value(0);
    update.wait()?;
    let p0 = column(&again.fetch()?[0])?.value(0);
    println!("sum of squares of 0..8000 = {total}");
    println!("partition 0 after scaling by 2: sum = {p0}");

    let log = ctx.event_log();
    println!("\n{}", log.summary());
    let dir = std::env::temp_dir();
    let trace = dir.join("dirk-task-graph.trace.json");
    let dot = dir.join("dirk-task-graph.dot");
    ctx.write_chrome_trace(&trace)?;
    ctx.write_graphviz(&dot)?;
    println!(
        "trace (open in https://ui.perfetto.dev): {}",
        trace.display()
    );
    println!("task graph (render with `dot -Tsvg`): {}", dot.display());
    Ok(())
}
