//! The worker side of Dirk's tables: the kernels tasks run, each in its own file. They see a
//! task's input chunks, its parameters and its worker's environment; nothing of the session,
//! the catalog or the driver's planner.

pub(crate) mod fragment;
pub(crate) mod mutation;
pub(crate) mod rowchange;
pub(crate) mod statistics;
pub(crate) mod tpch;

use std::sync::Arc;

/// Registers Dirk's kernels (plan fragments, TPC-H generation, mutation steps): on the session's
/// in-process workers, and by `dirk worker` on its own.
pub fn register_kernels(registry: &dirk_engine::KernelRegistry) {
    registry.register(Arc::new(fragment::FragmentKernel));
    registry.register(Arc::new(tpch::TpchGenKernel));
    registry.register(Arc::new(mutation::MutateKernel));
}
