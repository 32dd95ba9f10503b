//! The host emulator: runs generated kernel modules compiled for the CPU with the host's C++
//! compiler (`c++`, or `$CXX`).
//!
//! Every generated module carries, beside its `__global__` kernels, a `host_<kernel>` entry
//! under `#ifdef DIRK_HOST` that takes the same arguments (as `void**`, the way
//! `cuLaunchKernel` takes them) and runs the same per-row device functions sequentially. The
//! row semantics (three-valued logic, float ordering, wrapping arithmetic, casts, grouping,
//! aggregate updates and merges) are therefore the code the GPU runs; what only a GPU runs is
//! the thread scheduling around them (grid-stride loops, warp ballots, shared memory).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::{Arg, KernelSource, MemoryAccount};
use crate::error::{GpuError, Result};

/// Host memory standing in for device memory: 8-byte aligned, written by emulated kernels
/// through raw pointers.
pub(crate) struct HostMemory {
    ptr: *mut u64,
    words: usize,
}

// SAFETY: the memory is owned by this value alone; kernels write it only during `launch`, which
// borrows the buffers it is given.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

impl HostMemory {
    pub(crate) fn zeroed(bytes: usize) -> Self {
        let words = bytes.div_ceil(8).max(1);
        let boxed = vec![0u64; words].into_boxed_slice();
        HostMemory {
            ptr: Box::into_raw(boxed) as *mut u64,
            words,
        }
    }

    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let m = Self::zeroed(bytes.len());
        // SAFETY: `m` holds at least `bytes.len()` bytes and does not overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.ptr as *mut u8, bytes.len()) };
        m
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr as *mut u8
    }

    pub(crate) fn to_vec(&self, bytes: usize) -> Vec<u8> {
        // SAFETY: `bytes` is at most the allocation's size (the buffer's recorded length).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, bytes) }.to_vec()
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Box::into_raw` of a boxed slice of `words` u64.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.words)) });
    }
}

type HostEntry = unsafe extern "C" fn(*mut *mut std::ffi::c_void);

/// A kernel's compiled module, once built.
type LibrarySlot = Arc<Mutex<Option<Arc<libloading::Library>>>>;

/// Compiles kernel modules for the host and runs their `host_` entries.
#[derive(Debug)]
pub struct HostDevice {
    memory: Arc<MemoryAccount>,
    dir: PathBuf,
    /// One slot per kernel key. A slot's lock is held while its module compiles, so threads
    /// asking for the same kernel wait for one build instead of writing the same `.so` path
    /// while another thread `dlopen`s it.
    libraries: Mutex<HashMap<String, LibrarySlot>>,
}

impl HostDevice {
    pub(crate) fn new(limit: usize) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dirk-gpu-host-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| GpuError::Compile {
            name: "host emulator".into(),
            log: format!("cannot create {}: {e}", dir.display()),
        })?;
        Ok(HostDevice {
            memory: Arc::new(MemoryAccount::new(limit)),
            dir,
            libraries: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn memory(&self) -> &Arc<MemoryAccount> {
        &self.memory
    }

    fn library(&self, source: &KernelSource) -> Result<Arc<libloading::Library>> {
        let slot = self
            .libraries
            .lock()
            .entry(source.key.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock();
        if let Some(lib) = slot.as_ref() {
            return Ok(lib.clone());
        }
        let src = self.dir.join(format!("{}.cpp", source.key));
        let lib_path = self.dir.join(format!("lib{}.so", source.key));
        let fail = |log: String| GpuError::Compile {
            name: source.key.clone(),
            log,
        };
        std::fs::write(&src, &source.text).map_err(|e| fail(e.to_string()))?;
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            // No FMA contraction, like the NVRTC build: `a * b + c` rounds twice, as on the CPU.
            .args(["-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"])
            .arg("-DDIRK_HOST")
            .arg(&src)
            .arg("-o")
            .arg(&lib_path)
            .output()
            .map_err(|e| fail(format!("cannot run {cxx}: {e}")))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        // SAFETY: the library is one this process just compiled from generated source; its
        // initialisers are the C++ runtime's only.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| fail(format!("cannot load {}: {e}", lib_path.display())))?;
        let lib = Arc::new(lib);
        *slot = Some(lib.clone());
        Ok(lib)
    }

    pub(crate) fn launch(
        &self,
        source: &KernelSource,
        entry: &str,
        args: &[Arg<'_>],
    ) -> Result<()> {
        let lib = self.library(source)?;
        let symbol = format!("host_{entry}");
        // SAFETY: every `host_` entry has the signature `void(void**)`.
        let f: libloading::Symbol<'_, HostEntry> =
            unsafe { lib.get(symbol.as_bytes()) }.map_err(|e| GpuError::Compile {
                name: source.key.clone(),
                log: format!("no entry {symbol}: {e}"),
            })?;
        // One 8-byte, 8-aligned slot per argument holding its value (a pointer, or a scalar in
        // its low bytes: little-endian), and the array of the slots' addresses: the layout
        // `cuLaunchKernel` takes.
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Buf(b) => b.host_ptr() as usize as u64,
                Arg::OptBuf(b) => b.map_or(std::ptr::null_mut(), |b| b.host_ptr()) as usize as u64,
                Arg::I32(v) => *v as u32 as u64,
                Arg::U32(v) => *v as u64,
                Arg::F32(v) => v.to_bits() as u64,
                Arg::I64(v) => *v as u64,
                Arg::U64(v) => *v,
                Arg::F64(v) => v.to_bits(),
            })
            .collect();
        let mut pointers: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        // SAFETY: the argument list matches the entry's parameters (both come from
        // `codegen::Params`); the buffers it points into outlive the call.
        unsafe { f(pointers.as_mut_ptr()) };
        Ok(())
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        self.libraries.lock().clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
