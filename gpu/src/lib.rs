//! Dirk's GPU backend: filters and partial aggregations over Arrow columns resident in device
//! memory.
//!
//! - [`probe`] finds a GPU without ever panicking where there is none (no driver library, no
//!   NVRTC, no device): the answer is a device or a reason.
//! - [`DeviceColumn`] / [`DeviceBatch`] hold Arrow columns in device memory across queries,
//!   accounted against a per-device budget.
//! - [`GpuFilter`] lowers a DataFusion predicate to one fused kernel per expression shape
//!   (literals are kernel parameters), compiled once with NVRTC and cached.
//! - [`GpuAggregate`] lowers a DataFusion `Partial` aggregate (with the filter below it) and
//!   emits DataFusion's partial state, which DataFusion's `Final` aggregate merges.
//! - [`Device::host_emulator`] runs the same generated source compiled for the CPU, which is how
//!   machines without a GPU test the code generator and the operators.
//!
//! Anything outside the supported subset is [`GpuError::Unsupported`]; rows whose CPU result
//! is an error (integer division by zero, a narrowing cast out of range) give
//! [`GpuError::NeedsCpu`]. Either way the caller runs the work on the CPU.

mod aggregate;
mod codegen;
mod column;
mod cuda;
mod device;
mod error;
mod filter;
mod host;
mod ir;
mod probe;

pub use aggregate::{AggregatePlan, GpuAggregate, Strategy};
pub use column::{DeviceBatch, DeviceColumn, GpuType};
pub use cuda::{compile, CudaDevice, BLOCK_THREADS};
pub use device::{Arg, Device, DeviceBuffer, KernelSource, MemoryAccount};
pub use error::{GpuError, GpuUnavailable, Result};
pub use filter::{compact, GpuFilter, Selection};
pub use host::HostDevice;
pub use ir::{ArithOp, CmpOp, GExpr, Lowering, Param};
pub use probe::{driver_library_present, gpu, nvrtc_library_present, probe, DISABLE_ENV};

/// Every module a device compiles that does not depend on an expression (for compile checks).
pub fn static_kernels() -> Vec<KernelSource> {
    vec![codegen::compaction_module().clone()]
}
