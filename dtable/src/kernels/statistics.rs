//! Kernel step: per-chunk column statistics, computed on the worker that owns the chunk (the
//! driver's cache of them is `crate::prune`).

use arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use dirk_engine::Chunk;
use std::sync::Arc;

/// Kernel step: the min, max and null count of `columns` of a chunk, as one row (three
/// columns per column).
pub(crate) fn column_stats(
    chunk: &Chunk,
    columns: &[usize],
) -> Result<Vec<Chunk>, DataFusionError> {
    let mut fields = Vec::new();
    let mut values: Vec<ArrayRef> = Vec::new();
    for &c in columns {
        let field = chunk.schema().field(c);
        let dt = field.data_type();
        let mut min = MinAccumulator::try_new(dt)?;
        let mut max = MaxAccumulator::try_new(dt)?;
        let mut nulls = 0u64;
        for b in chunk.batches() {
            let a = Arc::clone(b.column(c));
            nulls += a.null_count() as u64;
            min.update_batch(std::slice::from_ref(&a))?;
            max.update_batch(&[a])?;
        }
        fields.push(Field::new(format!("min{c}"), dt.clone(), true));
        fields.push(Field::new(format!("max{c}"), dt.clone(), true));
        fields.push(Field::new(format!("nulls{c}"), DataType::UInt64, false));
        values.push(min.evaluate()?.to_array()?);
        values.push(max.evaluate()?.to_array()?);
        values.push(Arc::new(UInt64Array::from(vec![nulls])));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok(vec![Chunk::new(
        Arc::clone(&schema),
        vec![RecordBatch::try_new(schema, values)?],
    )])
}
