//! Dirk across processes.
//!
//! A `dirk worker` process runs a [`WorkerServer`]: an Arrow Flight service (on `tonic`) in
//! front of the engine's [`dirk_engine::InProcessWorker`]. A driver reaches each worker through a
//! [`RemoteWorker`], the engine's [`dirk_engine::Worker`] trait over Flight, so the scheduler
//! places and runs tasks on remote workers exactly as on in-process ones. Tasks travel as the
//! engine's serialized [`dirk_engine::TaskAssignment`]s (kernel name plus serialized plan
//! fragment), never SQL text; a worker fetches a task's inputs straight from the workers that
//! hold them, never through the driver. See [`protocol`] for the messages.

mod client;
mod local;
pub mod protocol;
mod server;

pub use client::{connect_cluster, connect_cluster_blocking, ClientOptions, RemoteWorker};
pub use local::{dirk_binary_of_this_build, listening_line, random_token, LocalWorkers};
pub use protocol::{PROTOCOL_VERSION, TOKEN_ENV};
pub use server::{WorkerOptions, WorkerServer};

/// Threads for a process's Flight runtime (its server's, or its client's towards workers) next to
/// `cpu_threads` threads of compute: one per four, at least one. Flight threads mostly wait, and
/// each hand-off between two of them wakes a sleeping thread that then waits for a core the
/// tasks hold. Measured on a 2-core machine (`dirk-benches tpch --scale 1 --workers local:2`,
/// five full runs each): one thread per runtime gave cluster / DataFusion 1.16-1.27 against
/// 1.21-1.27 with two, within the runs' noise; Flight throughput did not change. Kept for the
/// fewer threads.
pub fn io_threads(cpu_threads: usize) -> usize {
    cpu_threads.div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_runtime_gets_one_io_thread_per_four_cpu_threads_and_at_least_one() {
        assert_eq!(super::io_threads(0), 1);
        assert_eq!(super::io_threads(1), 1);
        assert_eq!(super::io_threads(4), 1);
        assert_eq!(super::io_threads(5), 2);
        assert_eq!(super::io_threads(16), 4);
    }
}
