//! Grouped and ungrouped aggregation producing DataFusion's partial-aggregate state, so that
//! DataFusion's `Final` aggregate merges GPU and CPU partials alike.
//!
//! Group keys are integer columns. Each key's offset from its minimum (taken at upload) is a
//! digit of a mixed-radix group code, with one extra digit value for NULL, so the code space is
//! known before the kernel runs. The slots live:
//! - in each thread's own registers when the code space is at most 16 (no GROUP BY is one slot),
//!   merged per block in shared memory, then once per block into global memory;
//! - in a per-block shared-memory table when the whole table fits there;
//! - in a global table indexed by the code when the space is dense enough;
//! - otherwise in a global open-addressing hash table of codes (`atomicCAS`, linear probing,
//!   sized to at most half full so that a probe always ends).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    UInt64Array,
};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::codegen::{self, AggKind, AggSpec, Field, PRIVATE_SLOTS_MAX};
use crate::column::{DeviceBatch, GpuType};
use crate::device::{Arg, Device};
use crate::error::{GpuError, Result};
use crate::filter::{check_flags, input_args, inputs_of};
use crate::ir::{GExpr, Lowering, Param};

/// Shared memory a block-private table may use.
const SHARED_TABLE_BYTES: u64 = 40 * 1024;

/// Where an aggregation keeps its group slots (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Thread-private slots for a code space of at most 16.
    Private,
    /// A block-private table in shared memory.
    Shared,
    /// A global table indexed by group code.
    Dense,
    /// A global hash table of group codes.
    Hash,
}

impl Strategy {
    fn entry(self) -> &'static str {
        match self {
            Strategy::Private => "agg_private",
            Strategy::Shared => "agg_shared",
            Strategy::Dense => "agg_global",
            Strategy::Hash => "agg_hash",
        }
    }
}

/// A partial aggregation lowered for the GPU: an optional filter, integer group keys, and
/// `COUNT(*)`, `COUNT`, `SUM`, `MIN`, `MAX`, `AVG`.
#[derive(Debug, Clone)]
pub struct GpuAggregate {
    predicate: Option<GExpr>,
    keys: Vec<(usize, GpuType)>,
    aggs: Vec<AggSpec>,
    params: Vec<Param>,
    output: SchemaRef,
}

/// The plan the kernels for one batch follow.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    /// Slot placement.
    pub strategy: Strategy,
    /// Size of the group code space.
    pub code_space: u64,
    /// Slots allocated.
    pub slots: u64,
    key_min: Vec<i64>,
    key_digits: Vec<u64>,
    key_stride: Vec<u64>,
}

fn unsupported<T>(what: impl Into<String>) -> Result<T> {
    Err(GpuError::Unsupported(what.into()))
}

impl GpuAggregate {
    /// The first `Partial` aggregate in `plan` (depth first): the node [`GpuAggregate::from_plan`]
    /// lowers and the node a GPU's partial states replace.
    pub fn find_partial(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| *a.mode() == AggregateMode::Partial)
        {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(Self::find_partial)
    }

    /// Lowers a DataFusion `Partial` aggregate, with the predicate of a `FilterExec` directly
    /// below it (if any) fused in. Columns are looked up by name in `schema`, the device batch's.
    pub fn from_plan(plan: &Arc<dyn ExecutionPlan>, schema: &Schema) -> Result<GpuAggregate> {
        let Some(agg) = plan.downcast_ref::<AggregateExec>() else {
            return unsupported(format!("the plan node {}", plan.name()));
        };
        if *agg.mode() != AggregateMode::Partial {
            return unsupported(format!("aggregate mode {:?}", agg.mode()));
        }
        // Below the aggregate: an optional filter, and otherwise only nodes that move rows
        // without changing them, down to the scan the device batch stands for.
        let mut node = agg.input().clone();
        let mut predicate = None;
        loop {
            if let Some(f) = node.downcast_ref::<FilterExec>() {
                // A projection folded into the filter changes nothing here: columns are
                // resolved by name in the device batch.
                if predicate.is_some() {
                    return unsupported("two filters below an aggregate");
                }
                predicate = Some(f.predicate().clone());
            } else if node.children().is_empty() {
                break;
            } else if !(node.downcast_ref::<RepartitionExec>().is_some()
                || node.downcast_ref::<CoalescePartitionsExec>().is_some())
            {
                return unsupported(format!("the plan node {} below an aggregate", node.name()));
            }
            let child = node.children()[0].clone();
            node = child;
        }
        let group = agg.group_expr();
        if !group.null_expr().is_empty() || group.groups().len() > 1 {
            return unsupported("GROUPING SETS, CUBE and ROLLUP");
        }
        let group_exprs: Vec<Arc<dyn PhysicalExpr>> =
            group.expr().iter().map(|(e, _)| e.clone()).collect();
        if agg.filter_expr().iter().any(|f| f.is_some()) {
            return unsupported("aggregates with FILTER (WHERE …)");
        }
        Self::lower(
            predicate.as_ref(),
            &group_exprs,
            agg.aggr_expr(),
            agg.schema(),
            schema,
        )
    }

    /// Lowers the parts of a partial aggregation; `output` is DataFusion's partial schema
    /// (group columns, then each aggregate's state fields).
    pub fn lower(
        predicate: Option<&Arc<dyn PhysicalExpr>>,
        group_by: &[Arc<dyn PhysicalExpr>],
        aggs: &[Arc<AggregateFunctionExpr>],
        output: SchemaRef,
        schema: &Schema,
    ) -> Result<GpuAggregate> {
        let mut lowering = Lowering::new(schema);
        let predicate = predicate.map(|p| lowering.lower(p)).transpose()?;
        if predicate
            .as_ref()
            .is_some_and(|p| p.ty() != GpuType::Boolean)
        {
            return unsupported("a non-boolean filter");
        }
        let mut keys = Vec::new();
        for g in group_by {
            match lowering.lower(g)? {
                GExpr::Column { index, ty } if ty.is_integer() => keys.push((index, ty)),
                other => return unsupported(format!("grouping by {}", other.shape())),
            }
        }
        let mut specs = Vec::new();
        for a in aggs {
            if a.is_distinct() {
                return unsupported("DISTINCT aggregates");
            }
            let args = a.expressions();
            let name = a.fun().name().to_ascii_lowercase();
            let literal_arg = args.len() == 1
                && args[0]
                    .downcast_ref::<Literal>()
                    .is_some_and(|l| !l.value().is_null());
            if name == "count" && literal_arg {
                specs.push(AggSpec {
                    kind: AggKind::CountStar,
                    arg: None,
                });
                continue;
            }
            if args.len() != 1 {
                return unsupported(format!("{name} with {} arguments", args.len()));
            }
            let arg = lowering.lower(&args[0])?;
            let ty = arg.ty();
            let kind = match name.as_str() {
                "count" => AggKind::Count,
                "sum" if ty == GpuType::Int64 || ty == GpuType::Float64 => AggKind::Sum,
                "avg" if ty == GpuType::Float64 => AggKind::Avg,
                "min" | "max" if ty.is_float() && !group_by.is_empty() => {
                    // DataFusion's grouped MIN/MAX of floats replaces the current value whenever
                    // a comparison is unordered (a NaN on either side), so its answer depends on
                    // row order; there is no order-free rule for the GPU to reproduce.
                    return unsupported(format!("grouped {name} of {ty:?}"));
                }
                "min" if ty != GpuType::Boolean => AggKind::Min,
                "max" if ty != GpuType::Boolean => AggKind::Max,
                _ => return unsupported(format!("{name} of {ty:?}")),
            };
            specs.push(AggSpec {
                kind,
                arg: Some(arg),
            });
        }
        Ok(GpuAggregate {
            predicate,
            keys,
            aggs: specs,
            params: lowering.params,
            output,
        })
    }

    /// The partial-state schema of the batches [`GpuAggregate::run`] returns.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    /// How the kernels would run over `batch`.
    pub fn plan(&self, batch: &DeviceBatch) -> Result<AggregatePlan> {
        let (fields, _) = codegen::agg_fields(&self.aggs);
        let mut key_min = Vec::new();
        let mut key_digits = Vec::new();
        let mut key_stride = Vec::new();
        let mut space: u128 = 1;
        for (index, _) in &self.keys {
            let (min, digits) = match batch.columns()[*index].range() {
                Some((lo, hi)) => (lo, (hi as i128 - lo as i128 + 1) as u128),
                None => (0, 0),
            };
            key_min.push(min);
            key_stride.push(space as u64);
            // One more digit value than the key has: NULL.
            space = space.saturating_mul(digits + 1);
            if space > 1u128 << 62 {
                return unsupported("group keys whose combined range exceeds 2^62");
            }
            key_digits.push(digits as u64);
        }
        let space = space as u64;
        let rows = batch.num_rows() as u64;
        let (strategy, slots) = if space <= PRIVATE_SLOTS_MAX {
            // A power of two, so that a handful of compiled variants serve every small key space.
            (Strategy::Private, space.next_power_of_two())
        } else if space * fields.len() as u64 * 8 <= SHARED_TABLE_BYTES {
            (Strategy::Shared, space)
        } else if space <= (1u64 << 22).max(2 * rows) {
            (Strategy::Dense, space)
        } else {
            (
                Strategy::Hash,
                (2 * rows.min(space)).next_power_of_two().max(64),
            )
        };
        Ok(AggregatePlan {
            strategy,
            code_space: space,
            slots,
            key_min,
            key_digits,
            key_stride,
        })
    }

    fn module(
        &self,
        batch: &DeviceBatch,
        plan: &AggregatePlan,
    ) -> (crate::device::KernelSource, codegen::Inputs) {
        let mut exprs: Vec<&GExpr> = self.predicate.iter().collect();
        exprs.extend(self.aggs.iter().filter_map(|a| a.arg.as_ref()));
        let key_exprs: Vec<GExpr> = self
            .keys
            .iter()
            .map(|(index, ty)| GExpr::Column {
                index: *index,
                ty: *ty,
            })
            .collect();
        exprs.extend(key_exprs.iter());
        let inputs = inputs_of(batch, &exprs, &self.params);
        let private = if plan.strategy == Strategy::Private {
            plan.slots
        } else {
            1
        };
        let (source, _) = codegen::aggregate_module(
            self.predicate.as_ref(),
            &self.keys,
            &self.aggs,
            &inputs,
            private,
        );
        (source, inputs)
    }

    /// The kernel module this aggregation runs for `batch` (for compile checks).
    pub fn kernel(&self, batch: &DeviceBatch) -> Result<crate::device::KernelSource> {
        let plan = self.plan(batch)?;
        Ok(self.module(batch, &plan).0)
    }

    /// Aggregates `batch` on `device` into one batch of partial states.
    pub fn run(&self, device: &Device, batch: &DeviceBatch) -> Result<RecordBatch> {
        let plan = self.plan(batch)?;
        self.run_with(device, batch, &plan)
    }

    /// As [`GpuAggregate::run`], with a plan (e.g. a strategy forced by a test).
    pub fn run_with(
        &self,
        device: &Device,
        batch: &DeviceBatch,
        plan: &AggregatePlan,
    ) -> Result<RecordBatch> {
        let (fields, layout) = codegen::agg_fields(&self.aggs);
        let (source, inputs) = self.module(batch, plan);
        let rows = batch.num_rows() as u64;
        let slot_bufs = (0..fields.len())
            .map(|_| device.alloc_zeroed((plan.slots * 8) as usize))
            .collect::<Result<Vec<_>>>()?;
        let table = match plan.strategy {
            Strategy::Hash => Some(device.alloc_zeroed((plan.slots * 8) as usize)?),
            _ => None,
        };
        let flags = device.alloc_zeroed(4)?;
        let mut args = input_args(batch, &inputs.columns, &self.params);
        for j in 0..self.keys.len() {
            args.push(Arg::I64(plan.key_min[j]));
            args.push(Arg::U64(plan.key_stride[j]));
            args.push(Arg::U64(plan.key_digits[j]));
        }
        args.push(Arg::U64(rows));
        args.push(Arg::U64(plan.slots));
        args.push(Arg::OptBuf(table.as_ref()));
        args.push(Arg::U64(plan.slots.saturating_sub(1)));
        args.extend(slot_bufs.iter().map(Arg::Buf));
        args.push(Arg::Buf(&flags));
        let shared = match plan.strategy {
            Strategy::Private | Strategy::Shared => (plan.slots * fields.len() as u64 * 8) as u32,
            _ => 0,
        };
        device.launch(&source, "agg_init", plan.slots, 0, &args)?;
        if rows > 0 {
            device.launch(&source, plan.strategy.entry(), rows, shared, &args)?;
        }
        check_flags(device, &flags)?;
        let values = slot_bufs
            .iter()
            .map(|b| device.download_u64(b))
            .collect::<Result<Vec<_>>>()?;
        // The occupied slots and their group codes.
        let groups: Vec<(usize, u64)> = if self.keys.is_empty() {
            // No GROUP BY: one state row even over no rows, as DataFusion emits.
            vec![(0, 0)]
        } else if let Some(table) = &table {
            device
                .download_u64(table)?
                .into_iter()
                .enumerate()
                .filter(|(_, code)| *code != u64::MAX)
                .collect()
        } else {
            values[0]
                .iter()
                .enumerate()
                .filter(|(_, rows)| **rows > 0)
                .map(|(k, _)| (k, k as u64))
                .collect()
        };
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (j, (_, ty)) in self.keys.iter().enumerate() {
            let (min, digits, stride) = (plan.key_min[j], plan.key_digits[j], plan.key_stride[j]);
            let key = groups.iter().map(|(_, code)| {
                let digit = (code / stride) % (digits + 1);
                (digit != digits).then(|| min.wrapping_add(digit as i64))
            });
            columns.push(integer_array(*ty, key));
        }
        for (spec, (value, count)) in self.aggs.iter().zip(&layout) {
            let counts: Vec<u64> = groups.iter().map(|(k, _)| values[*count][*k]).collect();
            let present = |i: usize| counts[i] > 0;
            let raw: Vec<u64> = match value {
                Some(v) => groups.iter().map(|(k, _)| values[*v][*k]).collect(),
                None => Vec::new(),
            };
            match spec.kind {
                AggKind::CountStar | AggKind::Count => columns.push(Arc::new(
                    Int64Array::from_iter_values(counts.iter().map(|c| *c as i64)),
                )),
                AggKind::Sum => {
                    let float = fields[value.unwrap()] == Field::SumFloat;
                    columns.push(if float {
                        Arc::new(
                            (0..raw.len())
                                .map(|i| present(i).then(|| f64::from_bits(raw[i])))
                                .collect::<Float64Array>(),
                        )
                    } else {
                        Arc::new(
                            (0..raw.len())
                                .map(|i| present(i).then_some(raw[i] as i64))
                                .collect::<Int64Array>(),
                        )
                    });
                }
                AggKind::Avg => {
                    // DataFusion's grouped AVG state is NULL in both fields for a group
                    // without values; its ungrouped merge ignores a NULL count.
                    columns.push(Arc::new(
                        (0..counts.len())
                            .map(|i| present(i).then_some(counts[i]))
                            .collect::<UInt64Array>(),
                    ));
                    columns.push(Arc::new(
                        (0..raw.len())
                            .map(|i| present(i).then(|| f64::from_bits(raw[i])))
                            .collect::<Float64Array>(),
                    ));
                }
                AggKind::Min | AggKind::Max => {
                    let ty = spec.arg.as_ref().unwrap().ty();
                    let keys = (0..raw.len()).map(|i| present(i).then_some(raw[i] as i64));
                    columns.push(match ty {
                        GpuType::Int64 | GpuType::Int32 | GpuType::Date32 => {
                            integer_array(ty, keys)
                        }
                        GpuType::Float64 => Arc::new(
                            keys.map(|k| k.map(|v| f64::from_bits(untkey64(v) as u64)))
                                .collect::<Float64Array>(),
                        ),
                        GpuType::Float32 => Arc::new(
                            keys.map(|k| k.map(|v| f32::from_bits(untkey32(v as i32) as u32)))
                                .collect::<Float32Array>(),
                        ),
                        GpuType::Boolean => unreachable!("MIN/MAX of booleans is not lowered"),
                    });
                }
            }
        }
        RecordBatch::try_new(self.output.clone(), columns).map_err(|e| {
            GpuError::Unsupported(format!("a partial state unlike DataFusion's ({e})"))
        })
    }
}

/// An array of integer type `ty` from values widened to `i64` (group keys, integer MIN/MAX).
fn integer_array(ty: GpuType, values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let narrow = |v: Option<i64>| v.map(|v| v as i32);
    match ty {
        GpuType::Int64 => Arc::new(values.collect::<Int64Array>()),
        GpuType::Int32 => Arc::new(values.map(narrow).collect::<Int32Array>()),
        GpuType::Date32 => Arc::new(values.map(narrow).collect::<Date32Array>()),
        other => unreachable!("{other:?} is not an integer type"),
    }
}

/// The inverse of the kernels' totalOrder key (the map is an involution).
fn untkey64(k: i64) -> i64 {
    k ^ (((k >> 63) as u64) >> 1) as i64
}

fn untkey32(k: i32) -> i32 {
    k ^ (((k >> 31) as u32) >> 1) as i32
}
