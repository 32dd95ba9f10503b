//! Filters: a fused kernel per predicate shape writes a selection bitmap; compaction gathers the
//! selected rows into new device columns.

use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::datatypes::Schema;
use datafusion::physical_expr::PhysicalExpr;

use crate::codegen::{self, Inputs, CHUNK_WORDS};
use crate::column::{DeviceBatch, DeviceColumn, GpuType};
use crate::device::{Arg, Device, DeviceBuffer};
use crate::error::{GpuError, Result};
use crate::ir::{GExpr, Lowering, Param};

/// A predicate lowered for the GPU. Lowering fails (with [`GpuError::Unsupported`]) for any
/// expression outside the subset; the caller then filters on the CPU.
#[derive(Debug, Clone)]
pub struct GpuFilter {
    expr: GExpr,
    params: Vec<Param>,
}

/// Which rows a filter kept: a bitmap in Arrow's layout, resident on the device.
#[derive(Debug)]
pub struct Selection {
    bits: DeviceBuffer,
    selected: u64,
    rows: usize,
}

impl Selection {
    /// Rows kept.
    pub fn count(&self) -> u64 {
        self.selected
    }

    /// Rows looked at.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The selection as a boolean array (true = kept), copied to the host.
    pub fn to_boolean_array(&self, device: &Device) -> Result<BooleanArray> {
        let mut bytes = device.download(&self.bits)?;
        bytes.resize(self.rows.div_ceil(8), 0);
        Ok(BooleanArray::new(
            BooleanBuffer::new(Buffer::from_slice_ref(&bytes), 0, self.rows),
            None,
        ))
    }
}

/// Launch arguments for the inputs of a generated kernel: each column's values and validity,
/// then the literals.
pub(crate) fn input_args<'a>(
    batch: &'a DeviceBatch,
    columns: &[(usize, GpuType, bool)],
    params: &[Param],
) -> Vec<Arg<'a>> {
    let mut args = Vec::new();
    for (index, _, _) in columns {
        let c = &batch.columns()[*index];
        args.push(Arg::Buf(c.values()));
        args.push(Arg::OptBuf(c.validity()));
    }
    for p in params {
        args.push(match p {
            Param::I32(v) => Arg::I32(*v),
            Param::I64(v) => Arg::I64(*v),
            Param::F32(v) => Arg::F32(*v),
            Param::F64(v) => Arg::F64(*v),
        });
    }
    args
}

/// The columns `exprs` read, with whether each has a validity bitmap in `batch`.
pub(crate) fn inputs_of(batch: &DeviceBatch, exprs: &[&GExpr], params: &[Param]) -> Inputs {
    let mut cols = Vec::new();
    for e in exprs {
        e.columns(&mut cols);
    }
    Inputs::new(
        cols.into_iter()
            .map(|(i, t)| (i, t, batch.columns()[i].validity().is_some()))
            .collect(),
        params,
    )
}

/// Turns kernel flags into the error that sends the work to the CPU.
pub(crate) fn check_flags(device: &Device, flags: &DeviceBuffer) -> Result<()> {
    let f = device.download(flags)?;
    let f = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
    if f & 1 != 0 {
        return Err(GpuError::NeedsCpu(
            "an integer division by zero or overflow".into(),
        ));
    }
    if f & 2 != 0 {
        return Err(GpuError::NeedsCpu(
            "a cast of a value out of the target's range".into(),
        ));
    }
    Ok(())
}

impl GpuFilter {
    /// Lowers `predicate`; its columns are looked up by name in `schema` (the device batch's).
    pub fn lower(predicate: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<GpuFilter> {
        let mut lowering = Lowering::new(schema);
        let expr = lowering.lower(predicate)?;
        if expr.ty() != GpuType::Boolean {
            return Err(GpuError::Unsupported(format!(
                "a filter predicate of type {:?}",
                expr.ty()
            )));
        }
        Ok(GpuFilter {
            expr,
            params: lowering.params,
        })
    }

    /// The lowered expression.
    pub fn expr(&self) -> &GExpr {
        &self.expr
    }

    /// The kernel module this filter runs for `batch` (for compile checks).
    pub fn kernel(&self, batch: &DeviceBatch) -> crate::device::KernelSource {
        codegen::filter_module(&self.expr, &inputs_of(batch, &[&self.expr], &self.params))
    }

    /// Evaluates the predicate over `batch`: rows where it is TRUE are selected (NULL and FALSE
    /// are not, as in SQL's WHERE).
    pub fn evaluate(&self, device: &Device, batch: &DeviceBatch) -> Result<Selection> {
        let rows = batch.num_rows();
        let words = rows.div_ceil(32);
        let bits = device.alloc_zeroed(words.max(1) * 4)?;
        let count = device.alloc_zeroed(8)?;
        let flags = device.alloc_zeroed(4)?;
        if rows > 0 {
            let inputs = inputs_of(batch, &[&self.expr], &self.params);
            let source = codegen::filter_module(&self.expr, &inputs);
            let mut args = input_args(batch, &inputs.columns, &self.params);
            args.extend([
                Arg::U64(rows as u64),
                Arg::Buf(&bits),
                Arg::Buf(&count),
                Arg::Buf(&flags),
            ]);
            device.launch(&source, "filter", rows as u64, 0, &args)?;
            check_flags(device, &flags)?;
        }
        let selected = device.download_u64(&count)?[0];
        Ok(Selection {
            bits,
            selected,
            rows,
        })
    }
}

/// Gathers the selected rows of every column of `batch` into a new device batch.
pub fn compact(device: &Device, batch: &DeviceBatch, selection: &Selection) -> Result<DeviceBatch> {
    let words = selection.rows.div_ceil(32) as u64;
    let chunks = words.div_ceil(CHUNK_WORDS);
    let out_rows = selection.selected as usize;
    let module = codegen::compaction_module();
    // Where each chunk's rows go: an exclusive scan of per-chunk counts (one number per 8192
    // rows, scanned on the host).
    let counts = device.alloc_zeroed((chunks.max(1) * 8) as usize)?;
    if words > 0 {
        device.launch(
            module,
            "chunk_counts",
            words,
            0,
            &[
                Arg::Buf(&selection.bits),
                Arg::U64(words),
                Arg::Buf(&counts),
            ],
        )?;
    }
    let mut offsets = Vec::with_capacity(chunks as usize);
    let mut total = 0u64;
    for c in device.download_u64(&counts)? {
        offsets.push(total);
        total += c;
    }
    debug_assert_eq!(total, selection.selected);
    let offsets_bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    let offsets = device.upload(&offsets_bytes)?;
    let launch_rows = chunks * CHUNK_WORDS;
    let gather = |entry: &str, src: &DeviceBuffer, dst: &DeviceBuffer| -> Result<()> {
        if words == 0 || out_rows == 0 {
            return Ok(());
        }
        device.launch(
            module,
            entry,
            launch_rows,
            0,
            &[
                Arg::Buf(&selection.bits),
                Arg::U64(words),
                Arg::Buf(&offsets),
                Arg::Buf(src),
                Arg::Buf(dst),
            ],
        )
    };
    let bitmap_bytes = out_rows.div_ceil(32).max(1) * 4;
    let mut columns = Vec::with_capacity(batch.columns().len());
    for c in batch.columns() {
        let ty = c.gpu_type();
        let values = match ty {
            GpuType::Boolean => {
                let dst = device.alloc_zeroed(bitmap_bytes)?;
                gather("compact_bits", c.values(), &dst)?;
                dst
            }
            t => {
                let dst = device.alloc_zeroed((out_rows * t.width()).max(1))?;
                let entry = if t.width() == 4 {
                    "compact32"
                } else {
                    "compact64"
                };
                gather(entry, c.values(), &dst)?;
                dst
            }
        };
        let (validity, null_count) = match c.validity() {
            Some(v) => {
                let dst = device.alloc_zeroed(bitmap_bytes)?;
                gather("compact_bits", v, &dst)?;
                let valid: u32 = device.download(&dst)?.iter().map(|b| b.count_ones()).sum();
                (Some(dst), out_rows - valid as usize)
            }
            None => (None, 0),
        };
        columns.push(Arc::new(DeviceColumn::from_parts(
            ty,
            out_rows,
            null_count,
            values,
            validity,
            c.range(),
        )));
    }
    Ok(DeviceBatch::new(batch.schema().clone(), columns, out_rows))
}
