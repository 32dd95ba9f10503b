//! Shared bodies: each runs the GPU path (on a GPU, or on the host emulator, which runs the same
#![allow(missing_docs, dead_code)]
//! generated kernel source compiled for the CPU) and DataFusion on the same batch, and requires
//! equal results.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use dirk_gpu::{
    compact, Device, DeviceBatch, GpuAggregate, GpuError, GpuFilter, Strategy as SlotStrategy,
};
use proptest::prelude::*;

/// The GPU, or `None` after saying why the test is skipped; with `DIRK_REQUIRE_GPU=1` a
/// missing GPU fails the test instead.
pub(crate) fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("DIRK_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: a GPU is required (DIRK_REQUIRE_GPU=1) but {e}");
            }
            eprintln!("SKIPPED {test}: no GPU ({e})");
            None
        }
    }
}

/// The host emulator.
pub(crate) fn emulator() -> Device {
    Device::host_emulator(1 << 30).expect("host emulator")
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int32, true),
        Field::new("b", DataType::Int64, true),
        Field::new("x", DataType::Float64, true),
        Field::new("y", DataType::Float32, true),
        Field::new("d", DataType::Date32, true),
        Field::new("f", DataType::Boolean, true),
        Field::new("k", DataType::Int32, true),
        Field::new("k2", DataType::Int64, true),
    ]))
}

type Row = (
    Option<i32>,
    Option<i64>,
    Option<f64>,
    Option<f32>,
    Option<i32>,
    Option<bool>,
    Option<i32>,
    Option<i64>,
);

fn int32() -> impl Strategy<Value = i32> {
    prop_oneof![6 => -5i32..6, 1 => Just(i32::MIN), 1 => Just(i32::MAX), 1 => any::<i32>()]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![6 => -20i64..20, 1 => Just(i64::MIN), 1 => Just(i64::MAX), 1 => any::<i64>(),
        1 => Just(3_000_000_000i64)]
}

fn float64() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => (-400i32..400).prop_map(|v| v as f64 / 4.0),
        1 => Just(f64::NAN),
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(3.0e9),
    ]
}

fn float32() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => (-40i32..40).prop_map(|v| v as f32 / 4.0),
        1 => Just(f32::NAN),
        1 => Just(-0.0f32),
        1 => Just(0.0f32),
        1 => Just(f32::INFINITY),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::weighted(0.85, int32()),
        proptest::option::weighted(0.85, int64()),
        proptest::option::weighted(0.85, float64()),
        proptest::option::weighted(0.85, float32()),
        proptest::option::weighted(0.85, 0i32..20),
        proptest::option::weighted(0.85, any::<bool>()),
        proptest::option::weighted(0.9, 0i32..12),
        proptest::option::weighted(
            0.9,
            prop_oneof![
                -3i64..3,
                Just(1i64 << 40),
                Just(-(1i64 << 40)),
                0i64..1_000_000
            ],
        ),
    )
}

/// A batch of random rows, sliced by `offset` so that arrays have a non-zero offset.
pub(crate) fn batch_strategy(max_rows: usize) -> impl Strategy<Value = RecordBatch> {
    (proptest::collection::vec(row(), 0..max_rows), 0usize..5).prop_map(|(rows, offset)| {
        let batch = batch_of(&rows);
        let offset = offset.min(batch.num_rows());
        batch.slice(offset, batch.num_rows() - offset)
    })
}

pub(crate) fn batch_of(rows: &[Row]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.0).collect::<Int32Array>()),
        Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.3).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| r.4).collect::<Date32Array>()),
        Arc::new(rows.iter().map(|r| r.5).collect::<BooleanArray>()),
        Arc::new(rows.iter().map(|r| r.6).collect::<Int32Array>()),
        Arc::new(rows.iter().map(|r| r.7).collect::<Int64Array>()),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

/// Predicates covering the supported subset: comparisons of every type, Kleene logic, IS
/// [NOT] NULL, BETWEEN, IN, arithmetic (wrapping, division), casts.
pub(crate) const PREDICATES: &[&str] = &[
    "a > 2",
    "b <= -3",
    "x < 0.5",
    "x = 0.0",
    "x <> x",
    "x >= 'NaN'::double",
    "y >= 1.5",
    "d < DATE '1970-01-08'",
    "a + 1 > 3",
    "a * 2 = b",
    "b - a < 0",
    "b * b > 100",
    "a IS NULL",
    "x IS NOT NULL AND f",
    "NOT f",
    "f OR a < 0",
    "f = (a > 0)",
    "a BETWEEN -2 AND 3",
    "a IN (1, 2, NULL)",
    "a NOT IN (1, 3)",
    "a NOT IN (1, NULL)",
    "x IN (0.0, 1.5, -0.0)",
    "b / a > 1",
    "x / y > 1",
    "CAST(x AS INT) > 2",
    "CAST(b AS INT) < 0",
    "CAST(a AS DOUBLE) * 0.5 > x",
    "(a > 0 AND x > 0) OR (b < 0 AND NOT f)",
    "NOT (a > 0 OR x > 0) AND y < 2",
];

/// Aggregations: no GROUP BY, few groups, many groups, two keys (a hash table), date keys.
pub(crate) const AGGREGATES: &[&str] = &[
    "SELECT count(*), count(x), sum(b), sum(a), min(x), max(x), avg(x), sum(x), min(a), max(d), min(y), max(b) FROM t",
    "SELECT count(*), sum(b), avg(y) FROM t WHERE a > 0",
    "SELECT k, count(*), sum(a), avg(x), min(b), max(d), count(f) FROM t GROUP BY k",
    "SELECT k, count(*), sum(x) FROM t WHERE x IS NOT NULL AND a < 3 GROUP BY k",
    "SELECT k, k2, count(*), sum(b), avg(x), max(a) FROM t GROUP BY k, k2",
    "SELECT k2, min(a), max(a) FROM t GROUP BY k2",
    "SELECT d, count(x), min(b), avg(a) FROM t WHERE NOT f GROUP BY d",
];

pub(crate) fn context(batch: &RecordBatch) -> SessionContext {
    // Two target partitions: DataFusion plans a Partial and a Final aggregate.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    // Two input partitions: even without GROUP BY, DataFusion plans Partial and Final.
    let half = batch.num_rows() / 2;
    let parts = vec![
        vec![batch.slice(0, half)],
        vec![batch.slice(half, batch.num_rows() - half)],
    ];
    let table = MemTable::try_new(batch.schema(), parts).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn find(
    plan: &Arc<dyn ExecutionPlan>,
    pred: &dyn Fn(&Arc<dyn ExecutionPlan>) -> bool,
) -> Option<Arc<dyn ExecutionPlan>> {
    if pred(plan) {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(|c| find(c, pred))
}

/// Cells as strings; floats compared by value within `tol` (relative) by [`same_cell`].
fn cells(batch: &RecordBatch) -> Vec<Vec<(DataType, String)>> {
    let opts = FormatOptions::default().with_null("NULL");
    let fmts: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            fmts.iter()
                .zip(batch.columns())
                .map(|(f, c)| (c.data_type().clone(), f.value(r).to_string()))
                .collect()
        })
        .collect()
}

fn same_cell(a: &str, b: &str, float: bool) -> bool {
    if a == b {
        return true;
    }
    if !float {
        return false;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_nan() && y.is_nan() => true,
        // Float sums and averages depend on the order of additions: the GPU's differs.
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-6 + 1e-9 * x.abs().max(y.abs()),
        _ => false,
    }
}

pub(crate) fn assert_same(context: &str, got: &RecordBatch, want: &RecordBatch) {
    let (g, w) = (cells(got), cells(want));
    assert_eq!(
        g.len(),
        w.len(),
        "{context}: row counts differ\n got {g:?}\nwant {w:?}"
    );
    for (r, (gr, wr)) in g.iter().zip(&w).enumerate() {
        for ((gt, gv), (_, wv)) in gr.iter().zip(wr) {
            let float = matches!(gt, DataType::Float32 | DataType::Float64);
            assert!(
                same_cell(gv, wv, float),
                "{context}: row {r} differs\n got {gr:?}\nwant {wr:?}"
            );
        }
    }
}

/// The rows DataFusion keeps for `WHERE predicate`, and the physical predicate it planned.
pub(crate) fn datafusion_filter(
    batch: &RecordBatch,
    predicate: &str,
) -> (
    Result<RecordBatch, String>,
    Arc<dyn datafusion::physical_expr::PhysicalExpr>,
) {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    let rt = runtime();
    let df = rt
        .block_on(ctx.sql(&format!("SELECT * FROM t WHERE {predicate}")))
        .unwrap();
    let plan = rt.block_on(df.create_physical_plan()).unwrap();
    let filter = find(&plan, &|p| p.downcast_ref::<FilterExec>().is_some()).unwrap_or_else(|| {
        panic!(
            "no FilterExec for {predicate}: {}",
            datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
        )
    });
    let predicate_expr = filter
        .downcast_ref::<FilterExec>()
        .unwrap()
        .predicate()
        .clone();
    let result = rt
        .block_on(collect(plan, ctx.task_ctx()))
        .map(|b| concat_batches(&batch.schema(), &b).unwrap())
        .map_err(|e| e.to_string());
    (result, predicate_expr)
}

/// Filters `batch` with `predicate` on `device` (selection, then compaction) and requires
/// DataFusion's rows. Returns whether the GPU path answered (false: it sent the work to the
/// CPU, as it must for rows whose CPU result is an error).
pub(crate) fn check_filter(device: &Device, batch: &RecordBatch, predicate: &str) -> bool {
    let (want, expr) = datafusion_filter(batch, predicate);
    let filter = GpuFilter::lower(&expr, &batch.schema())
        .unwrap_or_else(|e| panic!("{predicate}: lowering {expr}: {e}"));
    let resident = DeviceBatch::upload(device, batch).unwrap();
    match filter.evaluate(device, &resident) {
        Ok(selection) => {
            let want = want.unwrap_or_else(|e| {
                panic!("{predicate}: the GPU answered but DataFusion failed: {e}")
            });
            assert_eq!(
                selection.count() as usize,
                want.num_rows(),
                "{predicate}: selected rows"
            );
            let kept = compact(device, &resident, &selection).unwrap();
            let got = kept.download(device).unwrap();
            assert_same(predicate, &got, &want);
            // The selection bitmap agrees with DataFusion's own evaluation of the predicate.
            let mask = selection.to_boolean_array(device).unwrap();
            let evaluated = expr
                .evaluate(batch)
                .unwrap()
                .into_array(batch.num_rows())
                .unwrap();
            let evaluated = evaluated.as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(
                    mask.value(i),
                    evaluated.is_valid(i) && evaluated.value(i),
                    "{predicate}: row {i}"
                );
            }
            true
        }
        Err(GpuError::NeedsCpu(_)) => false,
        Err(e) => panic!("{predicate}: {e}"),
    }
}

/// Runs `sql` in DataFusion, and again with its Partial aggregate replaced by the GPU's partial
/// states (DataFusion's Final aggregate merges them), and requires the same rows. Every slot
/// strategy that can hold the key space is run. Returns how many strategies answered.
pub(crate) fn check_aggregate(device: &Device, batch: &RecordBatch, sql: &str) -> usize {
    let sql = if sql.contains("GROUP BY") {
        let keys = sql.split("GROUP BY").nth(1).unwrap();
        format!("{sql} ORDER BY {keys}")
    } else {
        sql.to_string()
    };
    let ctx = context(batch);
    let rt = runtime();
    let df = rt.block_on(ctx.sql(&sql)).unwrap();
    let plan = rt.block_on(df.create_physical_plan()).unwrap();
    let want = rt
        .block_on(collect(plan.clone(), ctx.task_ctx()))
        .map(|b| concat_batches(&plan.schema(), &b).unwrap());
    let partial = GpuAggregate::find_partial(&plan).unwrap_or_else(|| {
        panic!(
            "{sql}: no partial aggregate in\n{}",
            datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
        )
    });
    let gpu =
        GpuAggregate::from_plan(&partial, &batch.schema()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let resident = DeviceBatch::upload(device, batch).unwrap();
    let chosen = gpu.plan(&resident).unwrap();
    let rows = batch.num_rows() as u64;
    let mut strategies = vec![chosen.clone()];
    for s in [
        SlotStrategy::Shared,
        SlotStrategy::Dense,
        SlotStrategy::Hash,
    ] {
        let mut p = chosen.clone();
        p.strategy = s;
        p.slots = match s {
            SlotStrategy::Hash => (2 * rows.min(p.code_space)).next_power_of_two().max(64),
            _ => p.code_space,
        };
        if s != chosen.strategy && (s == SlotStrategy::Hash || p.code_space <= 4096) {
            strategies.push(p);
        }
    }
    let mut answered = 0;
    for p in strategies {
        let context = format!("{sql} [{:?}, {} slots]", p.strategy, p.slots);
        let states = match gpu.run_with(device, &resident, &p) {
            Ok(s) => s,
            Err(GpuError::NeedsCpu(_)) => continue,
            Err(e) => panic!("{context}: {e}"),
        };
        let schema = states.schema();
        let source = MemorySourceConfig::try_new_exec(&[vec![states]], schema, None).unwrap();
        let replaced = plan
            .clone()
            .transform_up(|node| {
                Ok(if Arc::ptr_eq(&node, &partial) {
                    Transformed::yes(source.clone() as Arc<dyn ExecutionPlan>)
                } else {
                    Transformed::no(node)
                })
            })
            .unwrap()
            .data;
        let got = rt.block_on(collect(replaced, ctx.task_ctx())).unwrap();
        let got = concat_batches(&plan.schema(), &got).unwrap();
        let want = want
            .as_ref()
            .unwrap_or_else(|e| panic!("{context}: GPU answered, DataFusion failed: {e}"));
        assert_same(&context, &got, want);
        answered += 1;
    }
    answered
}
