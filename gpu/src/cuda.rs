//! The CUDA device: one context and stream per GPU, device buffers, NVRTC-compiled modules.
//!
//! Only reached through [`crate::probe`], which has checked that the driver and NVRTC load.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use parking_lot::Mutex;

use crate::device::{Arg, KernelSource, MemoryAccount};
use crate::error::{GpuError, GpuUnavailable, Result};

/// Threads per block of every kernel; a multiple of the warp size (the filter's ballot needs it).
pub const BLOCK_THREADS: u32 = 256;

/// One GPU: its context, the stream all work is ordered on, and the kernels compiled for it.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    arch: String,
    sm_count: u32,
    memory: Arc<MemoryAccount>,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(String, String), CudaFunction>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}, {})", self.name, self.arch)
    }
}

fn unavailable(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> GpuUnavailable {
    move |e| GpuUnavailable::Driver {
        call,
        code: format!("{:?}", e.0),
    }
}

impl CudaDevice {
    /// Opens device `ordinal`. The caller has checked that the driver and NVRTC load.
    pub(crate) fn open(ordinal: usize) -> std::result::Result<Self, GpuUnavailable> {
        let ctx = CudaContext::new(ordinal).map_err(unavailable("cuCtxCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(unavailable("cuDeviceGetAttribute"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(unavailable("cuDeviceGetAttribute"))?;
        let (free, _total) = ctx.mem_get_info().map_err(unavailable("cuMemGetInfo"))?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            name,
            arch: format!("compute_{major}{minor}"),
            sm_count: sm_count.max(1) as u32,
            // Leave a fifth of the free memory to the driver, other processes and kernels'
            // temporary needs.
            memory: Arc::new(MemoryAccount::new(free / 5 * 4)),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual architecture kernels are compiled for, e.g. `compute_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Streaming multiprocessors; grids are sized from it.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The device memory budget.
    pub fn memory(&self) -> &Arc<MemoryAccount> {
        &self.memory
    }

    /// Seconds the work queued by `f` takes on the device, timed with CUDA events.
    pub fn timed(&self, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .ctx
            .new_event(flags)
            .map_err(|e| GpuError::driver("cuEventCreate", e))?;
        let end = self
            .ctx
            .new_event(flags)
            .map_err(|e| GpuError::driver("cuEventCreate", e))?;
        start
            .record(&self.stream)
            .map_err(|e| GpuError::driver("cuEventRecord", e))?;
        f()?;
        end.record(&self.stream)
            .map_err(|e| GpuError::driver("cuEventRecord", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| GpuError::driver("cuEventElapsedTime", e))?;
        Ok(ms as f64 / 1000.0)
    }

    /// Device-to-device copy bandwidth in bytes per second (bytes read plus bytes written), the
    /// ceiling a streaming kernel is measured against.
    pub fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let src = self.alloc_zeroed(bytes)?;
        let mut dst = self.alloc_zeroed(bytes)?;
        let copy = |dst: &mut CudaSlice<u8>| {
            self.stream
                .memcpy_dtod(&src, dst)
                .map_err(|e| GpuError::driver("cuMemcpyDtoD", e))
        };
        copy(&mut dst)?; // warm-up
        let reps = 10;
        let secs = self.timed(|| {
            for _ in 0..reps {
                copy(&mut dst)?;
            }
            Ok(())
        })?;
        Ok((2 * bytes * reps) as f64 / secs)
    }

    pub(crate) fn alloc_zeroed(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| out_of_memory_or(e, bytes, &self.memory, "cuMemAlloc"))
    }

    pub(crate) fn upload(&self, bytes: &[u8]) -> Result<CudaSlice<u8>> {
        if bytes.is_empty() {
            return self.alloc_zeroed(1);
        }
        self.stream
            .clone_htod(bytes)
            .map_err(|e| out_of_memory_or(e, bytes.len(), &self.memory, "cuMemcpyHtoD"))
    }

    pub(crate) fn download(&self, buf: &CudaSlice<u8>, bytes: usize) -> Result<Vec<u8>> {
        let mut out = self
            .stream
            .clone_dtoh(buf)
            .map_err(|e| GpuError::driver("cuMemcpyDtoH", e))?;
        out.truncate(bytes);
        Ok(out)
    }

    fn function(&self, source: &KernelSource, entry: &str) -> Result<CudaFunction> {
        let key = (source.key.clone(), entry.to_string());
        if let Some(f) = self.functions.lock().get(&key) {
            return Ok(f.clone());
        }
        let module = {
            let cached = self.modules.lock().get(&source.key).cloned();
            match cached {
                Some(m) => m,
                None => {
                    let ptx = compile(source, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(|e| GpuError::driver("cuModuleLoadData", e))?;
                    self.modules.lock().insert(source.key.clone(), m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(entry)
            .map_err(|e| GpuError::driver("cuModuleGetFunction", e))?;
        self.functions.lock().insert(key, f.clone());
        Ok(f)
    }

    /// Launches `entry` of `source` over `rows` rows: a grid-stride grid of a few blocks per
    /// multiprocessor, `shared_bytes` of dynamic shared memory per block.
    pub(crate) fn launch(
        &self,
        source: &KernelSource,
        entry: &str,
        rows: u64,
        shared_bytes: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        let f = self.function(source, entry)?;
        let blocks_needed = rows.div_ceil(BLOCK_THREADS as u64).max(1);
        let grid = blocks_needed.min(self.sm_count as u64 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: shared_bytes,
        };
        // Scalars are pushed by reference; they must outlive the builder.
        let null_ptr: u64 = 0;
        let mut builder = self.stream.launch_builder(&f);
        for arg in args {
            match arg {
                Arg::Buf(b) => {
                    builder.arg(b.cuda_slice());
                }
                Arg::OptBuf(Some(b)) => {
                    builder.arg(b.cuda_slice());
                }
                Arg::OptBuf(None) => {
                    builder.arg(&null_ptr);
                }
                Arg::I32(v) => {
                    builder.arg(v);
                }
                Arg::I64(v) => {
                    builder.arg(v);
                }
                Arg::U32(v) => {
                    builder.arg(v);
                }
                Arg::U64(v) => {
                    builder.arg(v);
                }
                Arg::F32(v) => {
                    builder.arg(v);
                }
                Arg::F64(v) => {
                    builder.arg(v);
                }
            }
        }
        // SAFETY: the argument list is built by the same code generator that wrote the kernel's
        // parameter list (`codegen::Params`), so count, order and types match.
        unsafe { builder.launch(cfg) }.map_err(|e| GpuError::driver("cuLaunchKernel", e))?;
        Ok(())
    }

    /// Waits for all work queued on the device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| GpuError::driver("cuStreamSynchronize", e))
    }
}

fn out_of_memory_or(
    e: cudarc::driver::DriverError,
    bytes: usize,
    memory: &MemoryAccount,
    call: &'static str,
) -> GpuError {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        GpuError::OutOfMemory {
            requested: bytes,
            used: memory.used(),
            limit: memory.limit(),
        }
    } else {
        GpuError::driver(call, e)
    }
}

/// Compiles `source` to PTX for `arch` (e.g. `compute_90`) with NVRTC. Needs NVRTC, not a GPU:
/// CI uses this to check that every generated kernel shape compiles.
pub fn compile(source: &KernelSource, arch: &str) -> Result<Ptx> {
    if !crate::probe::nvrtc_library_present() {
        return Err(GpuError::Unavailable(GpuUnavailable::NoNvrtcLibrary));
    }
    let opts = CompileOptions {
        // No fused multiply-add: the CPU path rounds `a * b + c` twice, and so must the GPU.
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{}.cu", source.key)),
        ..Default::default()
    };
    compile_ptx_with_opts(&source.text, opts).map_err(|e| GpuError::Compile {
        name: source.key.clone(),
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        },
    })
}
