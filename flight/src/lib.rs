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
mod clock;
mod failure;
mod local;
pub mod protocol;
mod server;

pub use client::{
    connect_cluster, connect_cluster_blocking, join_worker, ClientOptions, RemoteWorker,
};
pub use local::{dirk_binary_of_this_build, listening_line, random_token, LocalWorkers};
pub use protocol::{resolve_token, PROTOCOL_VERSION, TOKEN_ENV};
pub use server::{
    WorkerOptions, WorkerServer, DEFAULT_MAX_ATTACHMENTS, DEFAULT_MAX_CALLS, DEFAULT_MAX_PUT_BYTES,
};
