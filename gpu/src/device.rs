//! What the operators run on: a CUDA GPU, or the host emulator that runs the same generated
//! kernel source compiled for the CPU (so the code generator and the operators are tested on
//! machines without a GPU).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::CudaSlice;

use crate::cuda::CudaDevice;
use crate::error::{GpuError, Result};
use crate::host::{HostDevice, HostMemory};

/// Device memory accounting: every live [`DeviceBuffer`] holds a reservation of its size. An
/// allocation past the limit is an error, never a crash.
#[derive(Debug)]
pub struct MemoryAccount {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryAccount {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryAccount {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes held by live buffers.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.limit {
                return Err(GpuError::OutOfMemory {
                    requested: bytes,
                    used,
                    limit: self.limit,
                });
            }
            match self
                .used
                .compare_exchange(used, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        account: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

#[derive(Debug)]
struct Reservation {
    account: Arc<MemoryAccount>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.account.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Bytes in device memory (or, on the host emulator, in host memory standing in for it).
pub struct DeviceBuffer {
    storage: Storage,
    bytes: usize,
    _reservation: Reservation,
}

enum Storage {
    Cuda(CudaSlice<u8>),
    Host(HostMemory),
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes)", self.bytes)
    }
}

impl DeviceBuffer {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub(crate) fn cuda_slice(&self) -> &CudaSlice<u8> {
        match &self.storage {
            Storage::Cuda(s) => s,
            Storage::Host(_) => unreachable!("a host buffer passed to a CUDA launch"),
        }
    }

    pub(crate) fn host_ptr(&self) -> *mut u8 {
        match &self.storage {
            Storage::Host(m) => m.ptr(),
            Storage::Cuda(_) => unreachable!("a CUDA buffer passed to a host launch"),
        }
    }
}

/// One kernel argument, in the kernel's parameter order.
#[derive(Debug)]
pub enum Arg<'a> {
    /// A device pointer (read or written by the kernel).
    Buf(&'a DeviceBuffer),
    /// A device pointer that may be null (a column without nulls has no validity buffer).
    OptBuf(Option<&'a DeviceBuffer>),
    /// `int`
    I32(i32),
    /// `long long`
    I64(i64),
    /// `unsigned int`
    U32(u32),
    /// `unsigned long long`
    U64(u64),
    /// `float`
    F32(f32),
    /// `double`
    F64(f64),
}

/// CUDA C++ source of one module, and the key it is cached under: the same key means the same
/// source, so a compiled module is reused for every batch and literal value of that shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// Cache key; also the module's file name in compiler messages.
    pub key: String,
    /// The full source, prelude included.
    pub text: String,
}

/// Where kernels run.
#[derive(Debug, Clone)]
pub enum Device {
    /// A GPU.
    Cuda(Arc<CudaDevice>),
    /// The host emulator: the same kernel source compiled with the host's C++ compiler.
    Host(Arc<HostDevice>),
}

impl Device {
    /// The process's GPU, or why there is none.
    pub fn gpu() -> Result<Device> {
        crate::probe::gpu()
            .map(Device::Cuda)
            .map_err(GpuError::Unavailable)
    }

    /// A host emulator with a memory budget of `limit` bytes.
    pub fn host_emulator(limit: usize) -> Result<Device> {
        Ok(Device::Host(Arc::new(HostDevice::new(limit)?)))
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Device::Cuda(d) => format!("{} ({}, {} SMs)", d.name(), d.arch(), d.sm_count()),
            Device::Host(_) => "host emulator".to_string(),
        }
    }

    /// The memory budget.
    pub fn memory(&self) -> &Arc<MemoryAccount> {
        match self {
            Device::Cuda(d) => d.memory(),
            Device::Host(h) => h.memory(),
        }
    }

    /// A zero-filled buffer of `bytes` bytes.
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceBuffer> {
        let reservation = self.memory().reserve(bytes)?;
        let storage = match self {
            Device::Cuda(d) => Storage::Cuda(d.alloc_zeroed(bytes)?),
            Device::Host(_) => Storage::Host(HostMemory::zeroed(bytes)),
        };
        Ok(DeviceBuffer {
            storage,
            bytes,
            _reservation: reservation,
        })
    }

    /// Copies `bytes` to a new device buffer.
    pub fn upload(&self, bytes: &[u8]) -> Result<DeviceBuffer> {
        let reservation = self.memory().reserve(bytes.len())?;
        let storage = match self {
            Device::Cuda(d) => Storage::Cuda(d.upload(bytes)?),
            Device::Host(_) => Storage::Host(HostMemory::copy_of(bytes)),
        };
        Ok(DeviceBuffer {
            storage,
            bytes: bytes.len(),
            _reservation: reservation,
        })
    }

    /// Copies a buffer back to the host.
    pub fn download(&self, buf: &DeviceBuffer) -> Result<Vec<u8>> {
        match (self, &buf.storage) {
            (Device::Cuda(d), Storage::Cuda(s)) => d.download(s, buf.bytes),
            (Device::Host(_), Storage::Host(m)) => Ok(m.to_vec(buf.bytes)),
            _ => unreachable!("a buffer of one device used on another"),
        }
    }

    /// Copies a buffer of `u64` back to the host.
    pub fn download_u64(&self, buf: &DeviceBuffer) -> Result<Vec<u64>> {
        Ok(self
            .download(buf)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// Runs `entry` of `source` over `rows` rows.
    pub fn launch(
        &self,
        source: &KernelSource,
        entry: &str,
        rows: u64,
        shared_bytes: u32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        match self {
            Device::Cuda(d) => d.launch(source, entry, rows, shared_bytes, args),
            Device::Host(h) => h.launch(source, entry, args),
        }
    }
}
