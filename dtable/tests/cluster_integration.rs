//! The integration tests of `dtable_integration`, on `dirk worker` processes on loopback (three
//! per session unless a test asks for another count), plus the tests only a cluster has: tokens,
//! protocol versions, a worker killed mid-query.

/// These sessions attach to worker processes.
const ON_CLUSTER: bool = true;

#[path = "dtable/mod.rs"]
mod dtable;

mod cluster;
