//! The `dirk.tpchgen` kernel: generates one partition of a TPC-H table on the worker that then
//! owns it (`tpchgen-arrow`).

use arrow::array::RecordBatch;
use dirk_engine::{Chunk, EngineError, Kernel, KernelCall};
use serde::{Deserialize, Serialize};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The kernel's registered name.
pub(crate) const TPCH_KERNEL: &str = "dirk.tpchgen";

/// What one `dirk.tpchgen` task generates: partition `part` of `parts` of `table`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GenParams {
    pub(crate) table: String,
    pub(crate) scale: f64,
    pub(crate) part: usize,
    pub(crate) parts: usize,
}

/// Generates one partition of one TPC-H table.
pub(crate) struct TpchGenKernel;

impl Kernel for TpchGenKernel {
    fn name(&self) -> &str {
        TPCH_KERNEL
    }

    fn run(&self, call: &mut KernelCall<'_>) -> dirk_engine::Result<Vec<Chunk>> {
        let p: GenParams = call.params_json()?;
        let batches = generate(&p.table, p.scale, p.part, p.parts)?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| EngineError::internal("generator produced no batches"))?;
        Ok(vec![Chunk::new(schema, batches)])
    }
}

fn generate(
    table: &str,
    sf: f64,
    part: usize,
    parts: usize,
) -> dirk_engine::Result<Vec<RecordBatch>> {
    // tpchgen numbers parts from 1.
    let (part, parts) = (part as i32 + 1, parts as i32);
    let batches: Result<Vec<RecordBatch>, arrow::error::ArrowError> = match table {
        "nation" => NationArrow::new(NationGenerator::new(sf, part, parts)).collect(),
        "region" => RegionArrow::new(RegionGenerator::new(sf, part, parts)).collect(),
        "part" => PartArrow::new(PartGenerator::new(sf, part, parts)).collect(),
        "supplier" => SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).collect(),
        "partsupp" => PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).collect(),
        "customer" => CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).collect(),
        "orders" => OrderArrow::new(OrderGenerator::new(sf, part, parts)).collect(),
        "lineitem" => LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).collect(),
        other => return Err(EngineError::kernel(format!("no TPC-H table `{other}`"))),
    };
    batches.map_err(|e| crate::error::kernel_error(e.into()))
}
