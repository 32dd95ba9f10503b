//! Panics that Dirk catches and turns into errors: a kernel's, DataFusion's planner's on a
//! malformed statement, arrow's IPC reader's on malformed data from the network. Each becomes
//! one error line with the panic's message and place; Rust's panic hook does not also print it,
//! so a user sees the error once and a worker's log is not filled by a peer's bad input. Panics
//! outside these places still reach the hook the process had.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Once;
use std::task::Poll;

/// A caught panic: its message and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    /// The panic's message, on one line.
    pub message: String,
    /// `file:line` of the panic, when the hook saw it.
    pub location: Option<String>,
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(at) => write!(f, "{} (at {at})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

thread_local! {
    /// How many catching calls this thread is inside: the hook stays quiet while above zero.
    static CATCHING: Cell<usize> = const { Cell::new(0) };
    /// Where the last quiet panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a hook that records the place of a panic inside [`catch`] or
/// [`catch_async`] and hands every other panic to the hook installed before it.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) > 0 {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks the current thread as catching for as long as it lives.
struct Catching;

impl Catching {
    fn enter() -> Catching {
        CATCHING.with(|c| c.set(c.get() + 1));
        Catching
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get() - 1));
    }
}

fn caught(payload: Box<dyn std::any::Any + Send>) -> Panic {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
        .replace('\n', " ");
    Panic {
        message,
        location: LOCATION.with(|l| l.borrow_mut().take()),
    }
}

/// Runs `f`; a panic inside it is returned as [`Panic`] instead of unwinding further.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    install_hook();
    let _quiet = Catching::enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(caught)
}

/// Awaits `work`; a panic while it is polled is returned as [`Panic`]. Panics in tasks it
/// spawns on other threads are theirs to report.
pub async fn catch_async<F: Future>(work: F) -> Result<F::Output, Panic> {
    install_hook();
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        let _quiet = Catching::enter();
        match catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(caught(payload))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_carries_its_message_and_place() {
        let p = catch(|| -> u32 { panic!("bad\ninput {}", 7) }).unwrap_err();
        assert_eq!(p.message, "bad input 7");
        let at = p.location.expect("the hook saw it");
        assert!(at.starts_with("engine/src/panics.rs:"), "{at}");
        assert_eq!(catch(|| 5), Ok(5));
    }

    #[test]
    fn a_panic_while_a_future_is_polled_is_caught() {
        let work = async {
            std::future::ready(()).await;
            let v: Vec<u8> = Vec::new();
            v[3]
        };
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut caught = pin!(catch_async(work));
        match caught.as_mut().poll(&mut cx) {
            Poll::Ready(Err(p)) => assert!(p.message.contains("index out of bounds"), "{p}"),
            other => panic!(
                "expected a caught panic, got {:?}",
                other.map(|r| r.is_ok())
            ),
        }
    }
}
