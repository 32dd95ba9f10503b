//! Where the tests' sessions run. The same test bodies run twice: in `dtable_integration` on
//! in-process workers, and in `cluster_integration` on real `dirk worker` processes on
//! loopback (started once per worker count and shared by the tests, each test attaching its
//! own session).

use dirk_dtable::flight::LocalWorkers;
use dirk_dtable::{Session, SessionBuilder};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// True in the binary whose sessions attach to worker processes.
pub(crate) fn on_cluster() -> bool {
    crate::ON_CLUSTER
}

/// CPU threads per worker process: the CI machines have two cores.
const THREADS_PER_WORKER: usize = 2;

/// A session builder with `workers` workers: in-process ones, or worker processes.
pub(crate) fn builder(workers: usize) -> SessionBuilder {
    if !on_cluster() {
        return Session::builder().workers(workers);
    }
    static CLUSTERS: OnceLock<Mutex<BTreeMap<usize, LocalWorkers>>> = OnceLock::new();
    let mut clusters = CLUSTERS.get_or_init(Default::default).lock();
    let c = clusters.entry(workers).or_insert_with(|| start(workers));
    Session::builder().workers(c.addresses()).token(c.token())
}

/// `n` worker processes of the test's own (to kill one, say).
pub(crate) fn start(n: usize) -> LocalWorkers {
    LocalWorkers::start(&dirk_binary(), n, THREADS_PER_WORKER)
        .unwrap_or_else(|e| panic!("cannot start {n} dirk workers: {e}"))
}

/// The `dirk` binary of this build (`cargo test --workspace` builds it before running tests).
pub(crate) fn dirk_binary() -> PathBuf {
    dirk_dtable::flight::dirk_binary_of_this_build().unwrap_or_else(|e| panic!("{e}"))
}

/// Fails unless the session's workers come to hold exactly `expected` chunks: what is left once
/// queries have freed their intermediate and result chunks. A remote worker gets its frees as
/// messages nobody waits for, so they have a few seconds to arrive.
pub(crate) async fn assert_workers_hold(s: &Session, expected: usize, what: &str) {
    s.engine().wait_idle().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let held: usize = s.engine().worker_status().iter().map(|w| w.chunks).sum();
        if held == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the workers hold {held} chunks, not {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The chunks the session's workers hold now, once every task has finished.
pub(crate) fn held_chunks(s: &Session) -> usize {
    s.engine().wait_idle().unwrap();
    s.engine().worker_status().iter().map(|w| w.chunks).sum()
}
