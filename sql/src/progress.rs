//! The progress bar under a running query: tasks finished of tasks submitted since the query
//! began, read from the engine's counters. It appears only when a query takes longer than a
//! moment, and only on a terminal (`DIRK_PROGRESS=always` prints plain lines anywhere, for tests
//! and logs).

use dirk_engine::{Context, TaskCounts};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a query runs before its progress is shown.
const QUIET_FOR: Duration = Duration::from_millis(400);
const TICK: Duration = Duration::from_millis(50);

enum Display {
    Bar,
    Lines,
}

/// Runs `f`, showing the engine's task progress while it runs.
pub(crate) fn with_progress<T>(engine: &Context, f: impl FnOnce() -> T) -> T {
    let display = match std::env::var("DIRK_PROGRESS").as_deref() {
        Ok("always") => Display::Lines,
        Ok("never") => return f(),
        _ if std::io::stderr().is_terminal() => Display::Bar,
        _ => return f(),
    };
    let start = engine.task_counts();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| show(engine, start, &done, display));
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

/// (finished, submitted) since `start`.
fn progress(now: TaskCounts, start: TaskCounts) -> (u64, u64) {
    let submitted = now.submitted.saturating_sub(start.submitted);
    let finished = now.finished.saturating_sub(start.finished).min(submitted);
    (finished, submitted)
}

fn show(engine: &Context, start: TaskCounts, done: &AtomicBool, display: Display) {
    let began = Instant::now();
    while began.elapsed() < QUIET_FOR {
        if done.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(TICK);
    }
    let bar = match display {
        Display::Bar => {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} tasks, {elapsed_precise}",
                )
                .expect("template is valid")
                .progress_chars("=> "),
            );
            Some(bar)
        }
        Display::Lines => None,
    };
    let mut last = None;
    while !done.load(Ordering::Acquire) {
        let (finished, submitted) = progress(engine.task_counts(), start);
        match &bar {
            Some(bar) => {
                bar.set_length(submitted);
                bar.set_position(finished);
                bar.tick();
            }
            None if last != Some((finished, submitted)) => {
                eprintln!("progress: {finished}/{submitted} tasks");
            }
            None => {}
        }
        last = Some((finished, submitted));
        std::thread::sleep(TICK * 2);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_only_this_query_and_never_exceeds_the_total() {
        let start = TaskCounts {
            submitted: 100,
            finished: 90,
        };
        let now = TaskCounts {
            submitted: 140,
            finished: 120,
        };
        assert_eq!(progress(now, start), (30, 40));
        // Tasks of an earlier query finishing late do not push past the total.
        let now = TaskCounts {
            submitted: 105,
            finished: 130,
        };
        assert_eq!(progress(now, start), (5, 5));
    }
}
