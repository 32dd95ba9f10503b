//! Kernel steps of row-targeted changes (`MERGE INTO`, `UPDATE ... FROM`, ...), run by
//! `dirk.mutate` on the workers: tag a target chunk's rows, route a change query's answer to its
//! target chunks, verify that no row changes twice, rewrite chunks that lose rows. The driver's
//! side is `crate::dml::rowchange`.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast_with_options, filter_record_batch, take, CastOptions};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use datafusion::error::DataFusionError;
use dirk_engine::{Chunk, KernelCall};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type KResult<T> = std::result::Result<T, DataFusionError>;

/// The tag columns' names: the target chunk (its position in the table), the batch in the
/// chunk, the row in the batch.
pub(crate) const TAG_COLUMNS: [&str; 3] = ["__dirk_chunk", "__dirk_batch", "__dirk_row"];
pub(crate) const ACTION: &str = "__dirk_action";

/// What the query says to do with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Update = 1,
    Delete = 2,
    Insert = 3,
}

/// The chunk with the tag columns appended; `chunk` is its position in the table.
pub(crate) fn tag(chunk: &Chunk, position: u32) -> KResult<Vec<Chunk>> {
    let mut fields: Vec<Arc<Field>> = chunk.schema().fields().iter().cloned().collect();
    fields.extend(
        TAG_COLUMNS
            .iter()
            .map(|n| Arc::new(Field::new(*n, DataType::UInt32, false))),
    );
    let schema = Arc::new(Schema::new(fields));
    let batches = chunk
        .batches()
        .iter()
        .enumerate()
        .map(|(b, batch)| {
            let n = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(UInt32Array::from(vec![position; n])));
            columns.push(Arc::new(UInt32Array::from(vec![b as u32; n])));
            columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        })
        .collect::<KResult<Vec<_>>>()?;
    Ok(vec![Chunk::new(schema, batches)])
}

/// The schema of the values an update writes into one target chunk (the apply step's input):
/// batch, row, then the new values.
fn pending_schema(target: &Schema, columns: &[usize]) -> SchemaRef {
    let mut fields = crate::kernels::mutation::position_fields();
    fields.extend(
        columns
            .iter()
            .map(|&c| target.field(c).clone().with_nullable(true)),
    );
    Arc::new(Schema::new(fields))
}

fn cast_exact(a: &ArrayRef, to: &DataType) -> KResult<ArrayRef> {
    if a.data_type() == to {
        return Ok(Arc::clone(a));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(cast_with_options(a, to, &options)?)
}

/// Splits a change query's output chunk by target chunk: outputs are the updates of each of
/// `targets` chunks, then the deletes of each, then the inserted rows.
pub(crate) fn route(
    input: &Chunk,
    targets: usize,
    target: &Schema,
    columns: &[usize],
    updated: &[usize],
) -> KResult<Vec<Chunk>> {
    let update_columns: Vec<usize> = updated.iter().map(|&j| columns[j]).collect();
    let pending = pending_schema(target, &update_columns);
    let deletes = pending_schema(target, &[]);
    let mut updates: Vec<Vec<RecordBatch>> = vec![Vec::new(); targets];
    let mut removed: Vec<Vec<RecordBatch>> = vec![Vec::new(); targets];
    let mut inserted = Vec::new();
    for batch in input.batches() {
        let chunk = batch.column(0).as_primitive::<UInt32Type>();
        let row_batch = batch.column(1).as_primitive::<UInt32Type>();
        let action = arrow::compute::cast(batch.column(3), &DataType::Int64)?;
        let action = action.as_primitive::<Int64Type>();
        // (target chunk, target batch) -> result rows, for updates and deletes.
        let mut by_place: BTreeMap<(u32, u32, i64), Vec<u32>> = BTreeMap::new();
        let mut inserts = Vec::new();
        for i in 0..batch.num_rows() {
            if !action.is_valid(i) {
                continue;
            }
            match action.value(i) {
                a if a == Action::Insert as i64 => inserts.push(i as u32),
                a if a == Action::Update as i64 || a == Action::Delete as i64 => by_place
                    .entry((chunk.value(i), row_batch.value(i), a))
                    .or_default()
                    .push(i as u32),
                _ => {}
            }
        }
        for ((k, b, a), rows) in by_place {
            let k = k as usize;
            if k >= targets {
                return Err(DataFusionError::Internal(format!(
                    "a change names target chunk {k} of {targets}"
                )));
            }
            let rows = UInt32Array::from(rows);
            let mut out: Vec<ArrayRef> = vec![
                Arc::new(UInt32Array::from(vec![b; rows.len()])),
                take(batch.column(2), &rows, None)?,
            ];
            if a == Action::Update as i64 {
                for (&j, &c) in updated.iter().zip(&update_columns) {
                    let v = take(batch.column(4 + j), &rows, None)?;
                    out.push(cast_exact(&v, target.field(c).data_type())?);
                }
                updates[k].push(RecordBatch::try_new(Arc::clone(&pending), out)?);
            } else {
                removed[k].push(RecordBatch::try_new(Arc::clone(&deletes), out)?);
            }
        }
        if !inserts.is_empty() {
            let rows = UInt32Array::from(inserts);
            let mut out = Vec::with_capacity(target.fields().len());
            for (c, field) in target.fields().iter().enumerate() {
                let j = columns.iter().position(|x| *x == c).ok_or_else(|| {
                    DataFusionError::Internal(format!("no inserted value for column {c}"))
                })?;
                let v = cast_exact(&take(batch.column(4 + j), &rows, None)?, field.data_type())?;
                if v.null_count() > 0 && !field.is_nullable() {
                    return Err(DataFusionError::Execution(format!(
                        "column `{}` is NOT NULL; the insert would set it to null",
                        field.name()
                    )));
                }
                out.push(v);
            }
            inserted.push(RecordBatch::try_new(Arc::new(target.clone()), out)?);
        }
    }
    let mut out: Vec<Chunk> = updates
        .into_iter()
        .map(|b| Chunk::new(Arc::clone(&pending), b))
        .collect();
    out.extend(
        removed
            .into_iter()
            .map(|b| Chunk::new(Arc::clone(&deletes), b)),
    );
    out.push(Chunk::new(Arc::new(target.clone()), inserted));
    Ok(out)
}

/// The (batch, row) places a set of pending inputs name, in input order.
fn places(inputs: &[&Chunk]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for c in inputs {
        for b in c.batches() {
            let batch = b.column(0).as_primitive::<UInt32Type>();
            let rows = b.column(1).as_primitive::<UInt32Type>();
            out.extend(
                batch
                    .values()
                    .iter()
                    .copied()
                    .zip(rows.values().iter().copied()),
            );
        }
    }
    out
}

fn changed_twice() -> DataFusionError {
    DataFusionError::Execution(
        "a target row would be changed more than once (it matches more than one source row)".into(),
    )
}

/// Fails when the updates of inputs `0..updates` and the deletes after them name a row twice
/// (deletes among themselves are allowed when `dedupe_deletes`).
pub(crate) fn verify(
    call: &KernelCall<'_>,
    first: usize,
    updates: usize,
    dedupe_deletes: bool,
) -> KResult<Vec<Chunk>> {
    let inputs: Vec<&Chunk> = (first..call.num_inputs()).map(|i| call.input(i)).collect();
    let (upd, del) = inputs.split_at(updates);
    let mut seen: HashMap<(u32, u32), bool> = HashMap::new();
    for p in places(upd) {
        if seen.insert(p, true).is_some() {
            return Err(changed_twice());
        }
    }
    for p in places(del) {
        match seen.insert(p, false) {
            Some(false) if dedupe_deletes => {}
            Some(_) => return Err(changed_twice()),
            None => {}
        }
    }
    Ok(Vec::new())
}

/// A target chunk (input 0) that loses rows, as a new chunk: the updates of inputs
/// `1..=updates` written by copy into `columns`, the rows the later inputs name removed.
pub(crate) fn rewrite(
    call: &KernelCall<'_>,
    columns: &[usize],
    updates: usize,
    dedupe_deletes: bool,
) -> KResult<Vec<Chunk>> {
    verify(call, 1, updates, dedupe_deletes)?;
    let target = call.input(0);
    let mut batches: Vec<RecordBatch> = target.batches().to_vec();
    for i in 1..=updates {
        for p in call.input(i).batches() {
            let b = p.column(0).as_primitive::<UInt32Type>().value(0) as usize;
            let rows = p.column(1).as_primitive::<UInt32Type>();
            let slot = batches.get_mut(b).ok_or_else(|| {
                DataFusionError::Internal(format!("no batch {b} in the target chunk"))
            })?;
            let mut cols = slot.columns().to_vec();
            for (k, &c) in columns.iter().enumerate() {
                cols[c] = crate::kernels::mutation::scatter_copy(
                    Arc::clone(&cols[c]),
                    rows,
                    p.column(2 + k),
                )?;
            }
            *slot = RecordBatch::try_new(slot.schema(), cols)?;
        }
    }
    let mut gone: Vec<Vec<bool>> = batches.iter().map(|b| vec![false; b.num_rows()]).collect();
    for i in updates + 1..call.num_inputs() {
        for (b, r) in places(&[call.input(i)]) {
            if let Some(flag) = gone.get_mut(b as usize).and_then(|g| g.get_mut(r as usize)) {
                *flag = true;
            }
        }
    }
    let mut kept = Vec::with_capacity(batches.len());
    for (batch, gone) in batches.iter().zip(gone) {
        let keep = arrow::array::BooleanArray::from(gone.iter().map(|g| !g).collect::<Vec<_>>());
        let b = filter_record_batch(batch, &keep)?;
        if b.num_rows() > 0 {
            kept.push(b);
        }
    }
    Ok(vec![Chunk::new(Arc::clone(target.schema()), kept)])
}
