//! Learned run times: per kernel, and per kernel and cost class.

use super::*;

/// Learned run time of one kernel: an exponentially weighted mean per task, and decayed sums of
/// the seconds and input bytes of its tasks that read inputs, whose ratio prices a byte.
#[derive(Default)]
struct KernelStats {
    mean_s: f64,
    samples: u64,
    input_s: f64,
    input_bytes: f64,
}

impl KernelStats {
    /// Adds a task that took `dur_s` over `input_bytes` of inputs.
    fn learn(&mut self, dur_s: f64, input_bytes: u64) {
        self.mean_s = if self.samples == 0 {
            dur_s
        } else {
            0.8 * self.mean_s + 0.2 * dur_s
        };
        self.samples += 1;
        if input_bytes > 0 {
            self.input_s = 0.9 * self.input_s + dur_s;
            self.input_bytes = 0.9 * self.input_bytes + input_bytes as f64;
        }
    }

    /// Expected seconds of a task over `input_bytes`; `None` before the first sample.
    fn estimate(&self, input_bytes: u64) -> Option<f64> {
        match self.samples {
            0 => None,
            _ if input_bytes > 0 && self.input_bytes > 0.0 => {
                Some(input_bytes as f64 * (self.input_s / self.input_bytes))
            }
            _ => Some(self.mean_s),
        }
    }
}

/// How many cost classes the scheduler keeps history for.
const MAX_COST_CLASSES: usize = 4096;

/// A kernel's history, and that of each of its cost classes.
#[derive(Default)]
struct KernelHistory {
    all: KernelStats,
    classes: IdMap<u64, KernelStats>,
}

/// What the scheduler has learned of run times: per kernel, and per (kernel, cost class) (see
/// [`crate::TaskOptions::cost_class`]). One lookup by kernel name per call: every task asks.
#[derive(Default)]
pub(super) struct RunTimes {
    kernels: IdMap<Arc<str>, KernelHistory>,
    /// Cost classes kept, over all kernels.
    classes: usize,
}

impl RunTimes {
    /// A task of `kernel` (and `class`) took `dur_s` over `input_bytes` of inputs.
    pub(super) fn learn(
        &mut self,
        kernel: &Arc<str>,
        class: Option<u64>,
        dur_s: f64,
        input_bytes: u64,
    ) {
        if class.is_some() && self.classes >= MAX_COST_CLASSES {
            // A bound on memory: the classes of a long session's past queries are dropped
            // together, and relearned as they run again.
            for history in self.kernels.values_mut() {
                history.classes.clear();
            }
            self.classes = 0;
        }
        let history = match self.kernels.get_mut(kernel) {
            Some(h) => h,
            None => self.kernels.entry(kernel.clone()).or_default(),
        };
        history.all.learn(dur_s, input_bytes);
        if let Some(class) = class {
            let stats = history.classes.entry(class).or_insert_with(|| {
                self.classes += 1;
                KernelStats::default()
            });
            stats.learn(dur_s, input_bytes);
        }
    }

    /// Expected seconds of a task of `kernel` (and `class`) over `input_bytes`: from its class's
    /// history when the class has run, else from its kernel's; `None` when neither has.
    pub(super) fn estimate(
        &self,
        kernel: &Arc<str>,
        class: Option<u64>,
        input_bytes: u64,
    ) -> Option<f64> {
        let history = self.kernels.get(kernel)?;
        class
            .and_then(|c| history.classes.get(&c))
            .and_then(|s| s.estimate(input_bytes))
            .or_else(|| history.all.estimate(input_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::RunTimes;
    use std::sync::Arc;

    #[test]
    fn a_cost_class_is_estimated_from_its_own_history() {
        let kernel: Arc<str> = Arc::from("dirk.fragment");
        let mut times = RunTimes::default();
        assert_eq!(times.estimate(&kernel, Some(1), 1000), None);
        // Class 1 reads a few columns of big chunks: cheap per byte. Class 2 is dear per byte.
        for _ in 0..5 {
            times.learn(&kernel, Some(1), 0.001, 1_000_000);
            times.learn(&kernel, Some(2), 0.100, 1_000_000);
        }
        let cheap = times.estimate(&kernel, Some(1), 1_000_000).unwrap();
        let dear = times.estimate(&kernel, Some(2), 1_000_000).unwrap();
        assert!((cheap - 0.001).abs() < 1e-9, "{cheap}");
        assert!((dear - 0.100).abs() < 1e-9, "{dear}");
        // Scaled by the bytes read.
        let half = times.estimate(&kernel, Some(2), 500_000).unwrap();
        assert!((half - 0.050).abs() < 1e-9, "{half}");
        // A class never seen, or no class, falls back to the kernel's mix of both.
        let unknown = times.estimate(&kernel, Some(3), 1_000_000).unwrap();
        assert!(cheap < unknown && unknown < dear, "{unknown}");
        assert_eq!(times.estimate(&kernel, None, 1_000_000), Some(unknown));
        // Another kernel knows nothing.
        assert_eq!(times.estimate(&Arc::from("other"), Some(1), 1), None);
    }

    #[test]
    fn cost_classes_are_bounded() {
        let kernel: Arc<str> = Arc::from("k");
        let mut times = RunTimes::default();
        for class in 0..(super::MAX_COST_CLASSES as u64 + 10) {
            times.learn(&kernel, Some(class), 0.01, 100);
        }
        assert!(times.classes <= super::MAX_COST_CLASSES);
        assert!(times.classes >= 10);
        let kept = times.kernels[&kernel].classes.len();
        assert_eq!(kept, times.classes);
    }
}
