//! Errors of the GPU backend: each is one line a user can act on.

use std::fmt;

/// Why no GPU can be used. Returned by the probe; never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuUnavailable {
    /// `DIRK_GPU_DISABLE` is set.
    Disabled,
    /// No CUDA driver library (`libcuda.so`) could be loaded.
    NoDriverLibrary,
    /// No NVRTC library (`libnvrtc.so`) could be loaded, so kernels cannot be compiled.
    NoNvrtcLibrary,
    /// The driver loaded but reports no device (or fewer than the ordinal asked for).
    NoDevice,
    /// A driver call failed; `code` is the raw `CUresult` name. (Formatting a cudarc
    /// `DriverError` calls into libcuda, which a partial driver may lack, so it is not kept.)
    Driver {
        /// The driver call that failed.
        call: &'static str,
        /// The `CUresult` name, e.g. `CUDA_ERROR_NO_DEVICE`.
        code: String,
    },
}

impl fmt::Display for GpuUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuUnavailable::Disabled => write!(f, "the GPU backend is disabled (DIRK_GPU_DISABLE)"),
            GpuUnavailable::NoDriverLibrary => {
                write!(f, "no CUDA driver library (libcuda.so) could be loaded")
            }
            GpuUnavailable::NoNvrtcLibrary => write!(
                f,
                "no NVRTC library (libnvrtc.so.13) could be loaded; kernels cannot be compiled"
            ),
            GpuUnavailable::NoDevice => write!(f, "the CUDA driver reports no device"),
            GpuUnavailable::Driver { call, code } => write!(f, "{call} failed: {code}"),
        }
    }
}

/// An error of a GPU operation.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No GPU can be used.
    #[error("GPU unavailable: {0}")]
    Unavailable(GpuUnavailable),
    /// The expression or aggregate is outside what the GPU backend runs; the caller runs it on
    /// the CPU. Never approximated.
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    /// The GPU met a row whose result the CPU path defines by an error or by a rule the kernel
    /// does not reproduce (an integer division by zero, a narrowing cast out of range): the
    /// caller runs the same work on the CPU, which gives DataFusion's answer or error.
    #[error("the GPU result needs the CPU path: {0}")]
    NeedsCpu(String),
    /// Device memory for this allocation would exceed the device's budget, or the driver
    /// refused it.
    #[error("out of GPU memory: {requested} bytes requested, {used} of {limit} bytes in use")]
    OutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// Bytes held by live device buffers.
        used: usize,
        /// The device's budget.
        limit: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA {call} failed: {code}")]
    Driver {
        /// The driver operation.
        call: &'static str,
        /// The `CUresult` name.
        code: String,
    },
    /// A generated kernel failed to compile: a bug in the code generator.
    #[error("kernel {name} failed to compile: {log}")]
    Compile {
        /// The kernel's cache key.
        name: String,
        /// The compiler's log.
        log: String,
    },
    /// Building or reading an Arrow array failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result of GPU operations.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl GpuError {
    /// A driver error, named by its raw code so that formatting it never calls into libcuda.
    pub(crate) fn driver(call: &'static str, e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver {
            call,
            code: format!("{:?}", e.0),
        }
    }
}
