//! Scopes: where a task may run (Dagger's `scope(worker=2)`, `ExactScope`, unions and
//! intersections), and processor kinds.

use crate::ids::WorkerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// A kind of processor a worker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProcessorKind {
    /// The worker's CPU thread pool.
    Cpu,
    /// GPU device `n` of the worker.
    Gpu(u32),
    /// A fake processor for tests of placement (Dagger's `FakeProc`); it runs kernels on the CPU
    /// but is a distinct kind that scopes can name.
    Fake(u32),
}

impl fmt::Display for ProcessorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessorKind::Cpu => write!(f, "cpu"),
            ProcessorKind::Gpu(n) => write!(f, "gpu{n}"),
            ProcessorKind::Fake(n) => write!(f, "fake{n}"),
        }
    }
}

/// One processor: a kind on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessorId {
    /// The worker.
    pub worker: WorkerId,
    /// The kind.
    pub kind: ProcessorKind,
}

impl fmt::Display for ProcessorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.worker, self.kind)
    }
}

/// One conjunction: a processor matches when its worker is in `workers` (or `workers` is
/// unrestricted) and its kind is in `kinds` (or `kinds` is unrestricted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Clause {
    workers: Option<BTreeSet<WorkerId>>,
    kinds: Option<BTreeSet<ProcessorKind>>,
}

impl Clause {
    fn matches(&self, p: &ProcessorId) -> bool {
        self.workers.as_ref().is_none_or(|w| w.contains(&p.worker))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&p.kind))
    }

    fn intersect(&self, other: &Clause) -> Option<Clause> {
        fn meet<T: Ord + Clone>(
            a: &Option<BTreeSet<T>>,
            b: &Option<BTreeSet<T>>,
        ) -> Option<Option<BTreeSet<T>>> {
            match (a, b) {
                (None, x) | (x, None) => Some(x.clone()),
                (Some(a), Some(b)) => {
                    let m: BTreeSet<T> = a.intersection(b).cloned().collect();
                    (!m.is_empty()).then_some(Some(m))
                }
            }
        }
        Some(Clause {
            workers: meet(&self.workers, &other.workers)?,
            kinds: meet(&self.kinds, &other.kinds)?,
        })
    }
}

/// Where a task may run: a union of clauses, each a set of workers crossed with a set of
/// processor kinds. Unions and intersections stay in this form, so emptiness is decided without
/// looking at which processors exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// Shared: every task carries its scope, and most carry the same one.
    clauses: Arc<[Clause]>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::any()
    }
}

impl Scope {
    /// Anywhere.
    pub fn any() -> Self {
        static ANY: std::sync::LazyLock<Scope> = std::sync::LazyLock::new(|| Scope {
            clauses: Arc::new([Clause {
                workers: None,
                kinds: None,
            }]),
        });
        ANY.clone()
    }

    /// Nowhere.
    pub fn empty() -> Self {
        Scope {
            clauses: Arc::new([]),
        }
    }

    /// Any processor of one worker.
    pub fn worker(worker: WorkerId) -> Self {
        Scope::workers([worker])
    }

    /// Any processor of any of these workers.
    pub fn workers(workers: impl IntoIterator<Item = WorkerId>) -> Self {
        let set: BTreeSet<_> = workers.into_iter().collect();
        if set.is_empty() {
            return Scope::empty();
        }
        Scope {
            clauses: Arc::new([Clause {
                workers: Some(set),
                kinds: None,
            }]),
        }
    }

    /// Processors of one kind, on any worker.
    pub fn processor(kind: ProcessorKind) -> Self {
        Scope {
            clauses: Arc::new([Clause {
                workers: None,
                kinds: Some([kind].into()),
            }]),
        }
    }

    /// Exactly one processor (Dagger's `ExactScope`).
    pub fn exact(p: ProcessorId) -> Self {
        Scope::worker(p.worker).intersect(&Scope::processor(p.kind))
    }

    /// Processors in both scopes.
    pub fn intersect(&self, other: &Scope) -> Scope {
        let mut clauses: Vec<Clause> = self
            .clauses
            .iter()
            .flat_map(|a| other.clauses.iter().filter_map(|b| a.intersect(b)))
            .collect();
        clauses.sort();
        clauses.dedup();
        Scope {
            clauses: clauses.into(),
        }
    }

    /// Processors in either scope.
    pub fn union(&self, other: &Scope) -> Scope {
        let mut clauses = self.clauses.to_vec();
        clauses.extend(other.clauses.iter().cloned());
        clauses.sort();
        clauses.dedup();
        Scope {
            clauses: clauses.into(),
        }
    }

    /// True when no processor can ever match.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// True when every processor matches.
    pub fn is_any(&self) -> bool {
        self.clauses
            .iter()
            .any(|c| c.workers.is_none() && c.kinds.is_none())
    }

    /// Whether processor `p` is in the scope.
    pub fn contains(&self, p: &ProcessorId) -> bool {
        self.clauses.iter().any(|c| c.matches(p))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clauses.is_empty() {
            return write!(f, "nowhere");
        }
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|c| {
                let w = match &c.workers {
                    None => "any worker".to_string(),
                    Some(s) => {
                        let ids: Vec<String> = s.iter().map(|w| w.0.to_string()).collect();
                        format!("worker {}", ids.join("|"))
                    }
                };
                let k = match &c.kinds {
                    None => "any processor".to_string(),
                    Some(s) => s
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                };
                format!("({w}, {k})")
            })
            .collect();
        write!(f, "{}", parts.join(" or "))
    }
}
