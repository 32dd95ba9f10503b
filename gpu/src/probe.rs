//! Finding a GPU without ever panicking on a machine that has none.
//!
//! cudarc loads libcuda and libnvrtc on first use and panics when they are missing, so every
//! path checks `is_culib_present()` (which only `dlopen`s the candidate names) before any other
//! cudarc call. The result is computed once per process.

#![allow(unsafe_code)]

use std::sync::{Arc, OnceLock};

use crate::cuda::CudaDevice;
use crate::error::GpuUnavailable;

/// The environment variable that turns the GPU backend off.
pub const DISABLE_ENV: &str = "DIRK_GPU_DISABLE";

/// Whether the CUDA driver library can be loaded. Calls no CUDA function.
pub fn driver_library_present() -> bool {
    // SAFETY: only tries `dlopen` on cudarc's candidate library names; calls no CUDA symbol.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded, so that kernels can be compiled (a GPU is not needed for that).
pub fn nvrtc_library_present() -> bool {
    // SAFETY: as above, a `dlopen` of candidate names only.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Probes device `ordinal` now, without caching. Prefer [`gpu`].
pub fn probe(ordinal: usize) -> Result<Arc<CudaDevice>, GpuUnavailable> {
    if std::env::var_os(DISABLE_ENV).is_some() {
        return Err(GpuUnavailable::Disabled);
    }
    if !driver_library_present() {
        return Err(GpuUnavailable::NoDriverLibrary);
    }
    let count =
        cudarc::driver::CudaContext::device_count().map_err(|e| GpuUnavailable::Driver {
            call: "cuDeviceGetCount",
            code: format!("{:?}", e.0),
        })?;
    if count <= 0 || count as usize <= ordinal {
        return Err(GpuUnavailable::NoDevice);
    }
    if !nvrtc_library_present() {
        return Err(GpuUnavailable::NoNvrtcLibrary);
    }
    CudaDevice::open(ordinal).map(Arc::new)
}

/// The process's GPU 0, probed once. Every later call returns the same answer.
pub fn gpu() -> Result<Arc<CudaDevice>, GpuUnavailable> {
    static GPU: OnceLock<Result<Arc<CudaDevice>, GpuUnavailable>> = OnceLock::new();
    GPU.get_or_init(|| probe(0)).clone()
}
