//! Newtype identifiers for tasks, chunks and workers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for the engine's integer ids: one multiply (Fibonacci hashing) instead of SipHash.
/// Ids are minted by the engine, not chosen by an adversary, so flooding resistance is not needed.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

/// A `HashMap` keyed by engine ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdBuildHasher>;

/// Identifies a task within one [`crate::Context`]. Assigned in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

/// Identifies a worker (one chunk store plus its processors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

/// Identifies a chunk. The high 16 bits hold the worker that minted the id and the low 48 bits a
/// per-worker sequence number, so every worker (local or remote) mints ids without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub u64);

impl ChunkId {
    const SEQ_BITS: u32 = 48;

    /// The id minted by `worker` as its `seq`-th chunk.
    pub fn new(worker: WorkerId, seq: u64) -> Self {
        debug_assert!(seq < (1 << Self::SEQ_BITS));
        ChunkId(((worker.0 as u64) << Self::SEQ_BITS) | seq)
    }

    /// The worker that minted this id (not necessarily its current owner).
    pub fn minted_by(self) -> WorkerId {
        WorkerId((self.0 >> Self::SEQ_BITS) as u32)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chunk {}.{}",
            self.minted_by().0,
            self.0 & ((1 << Self::SEQ_BITS) - 1)
        )
    }
}
