//! DTable: a distributed table, a schema plus partitions whose chunks live on workers.

use crate::error::{DirkError, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use dirk_engine::{ChunkRef, Context};
use std::sync::Arc;

/// A distributed table. Each partition is a list of chunks; the chunks stay on their workers
/// across queries. Cloning a DTable clones references, not data: a clone is a snapshot.
#[derive(Debug, Clone)]
pub struct DTable {
    schema: SchemaRef,
    partitions: Vec<Vec<ChunkRef>>,
    /// The columns the rows are hash-partitioned by, when they are: partition `p` holds exactly
    /// the rows whose key hashes (DataFusion's repartition hash) to `p`, so a query over it
    /// needs no exchange to group or join on these columns. Any change that could move a row
    /// to another partition (or change its key) drops this.
    hash_keys: Option<Arc<[String]>>,
}

impl DTable {
    /// A table of `partitions`, each a list of chunks of `schema`, with no known partitioning.
    pub fn new(schema: SchemaRef, partitions: Vec<Vec<ChunkRef>>) -> Self {
        DTable {
            schema,
            partitions,
            hash_keys: None,
        }
    }

    /// The same table, declared hash-partitioned by `keys` (column names of its schema). Only
    /// for a table whose partition `p` holds the rows DataFusion's hash repartitioning on
    /// `keys` into [`num_partitions`](Self::num_partitions) sends to `p`: queries trust it.
    pub(crate) fn with_hash_keys(self, keys: Vec<String>) -> Self {
        DTable {
            hash_keys: Some(keys.into()),
            ..self
        }
    }

    /// The same table (schema and layout) with `partitions` in place of its own: each new
    /// partition holds a subset of the rows of the old one at its index (what a `DELETE` or
    /// `TRUNCATE` leaves), so a hash partitioning still holds.
    pub(crate) fn with_subsets(&self, partitions: Vec<Vec<ChunkRef>>) -> Self {
        debug_assert_eq!(partitions.len(), self.partitions.len());
        DTable {
            schema: self.schema.clone(),
            partitions,
            hash_keys: self.hash_keys.clone(),
        }
    }

    /// The same table with no known partitioning.
    pub(crate) fn without_hash_keys(self) -> Self {
        DTable {
            hash_keys: None,
            ..self
        }
    }

    /// The columns the rows are hash-partitioned by, if known.
    pub fn hash_keys(&self) -> Option<&[String]> {
        self.hash_keys.as_deref()
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The partitions.
    pub fn partitions(&self) -> &[Vec<ChunkRef>] {
        &self.partitions
    }

    /// Number of partitions.
    pub fn num_partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Rows in all partitions.
    pub fn num_rows(&self) -> u64 {
        self.partitions.iter().flatten().map(|c| c.rows).sum()
    }

    /// Bytes in all partitions.
    pub fn num_bytes(&self) -> u64 {
        self.partitions.iter().flatten().map(|c| c.bytes).sum()
    }

    /// Adds rows (what `INSERT` does): new chunks, existing ones untouched.
    pub fn append(&mut self, other: DTable) -> Result<()> {
        if other.schema.fields().len() != self.schema.fields().len() {
            return Err(DirkError::SchemaMismatch {
                detail: format!(
                    "table has {} columns, rows have {}",
                    self.schema.fields().len(),
                    other.schema.fields().len()
                ),
            });
        }
        let new: Vec<Vec<ChunkRef>> = other
            .partitions
            .into_iter()
            .map(|p| p.into_iter().filter(|c| c.rows > 0).collect::<Vec<_>>())
            .filter(|p| !p.is_empty())
            .collect();
        // New rows join partitions by rotation, not by their keys' hash.
        self.hash_keys = None;
        if self.num_rows() == 0 {
            self.partitions = new;
            return Ok(());
        }
        // The new chunks join the existing partitions, rotating so small appends spread out:
        // a table keeps its partition count however many INSERTs it takes, and a scan of it
        // stays one task per partition.
        let n = self.partitions.len();
        let start = self.chunks().count() % n;
        for (j, part) in new.into_iter().enumerate() {
            self.partitions[(start + j) % n].extend(part);
        }
        Ok(())
    }

    /// Brings every batch to the caller, partition by partition.
    pub fn collect(&self, engine: &Context) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for c in self.partitions.iter().flatten() {
            let chunk = engine.fetch(c)?;
            out.extend(chunk.batches().iter().map(|b| {
                // Chunks keep the schema they were made with; present them with the table's
                // (same types, possibly other field names or metadata).
                crate::exec::with_schema(b, &self.schema).unwrap_or_else(|_| b.clone())
            }));
        }
        Ok(out)
    }

    /// All chunk references.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.partitions.iter().flatten()
    }
}
