//! Datadeps: from the access modes of tasks submitted in order, derive the edges that make the
//! result equal serial execution (read-after-write, write-after-read, write-after-write).

use crate::ids::{ChunkId, IdMap, TaskId};
use crate::task::Access;

/// The data an access is about: an existing chunk, or an output of a task that has not finished
/// (renamed to its chunk once the task finishes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DataKey {
    Chunk(ChunkId),
    Output(TaskId, u32),
}

#[derive(Debug, Default)]
struct KeyState {
    /// The last task that wrote the data, while it has not finished.
    writer: Option<TaskId>,
    /// Tasks that read the data since that write, while they have not finished.
    readers: Vec<TaskId>,
}

/// Tracks, per datum, the unfinished last writer and readers.
#[derive(Debug, Default)]
pub(crate) struct DataDeps {
    keys: IdMap<DataKey, KeyState>,
}

impl DataDeps {
    /// Records that `task` accesses `key`, pushing onto `deps` the tasks it must wait for.
    pub(crate) fn record(
        &mut self,
        task: TaskId,
        key: DataKey,
        access: Access,
        deps: &mut Vec<TaskId>,
    ) {
        let st = self.keys.entry(key).or_default();
        if let Some(w) = st.writer {
            if w != task {
                deps.push(w); // RAW or WAW
            }
        }
        if access.writes() {
            deps.extend(st.readers.iter().copied().filter(|r| *r != task)); // WAR
            st.readers.clear();
            st.writer = Some(task);
        } else if st.writer != Some(task) && !st.readers.contains(&task) {
            st.readers.push(task);
        }
    }

    /// Once `task` has finished (or will never run), nobody needs to wait for it. Calls
    /// `unused` with each of its keys that no unfinished task accesses any more.
    pub(crate) fn forget(
        &mut self,
        task: TaskId,
        keys: &[DataKey],
        mut unused: impl FnMut(DataKey),
    ) {
        for key in keys {
            if let Some(st) = self.keys.get_mut(key) {
                if st.writer == Some(task) {
                    st.writer = None;
                }
                st.readers.retain(|r| *r != task);
                if st.writer.is_none() && st.readers.is_empty() {
                    self.keys.remove(key);
                    unused(*key);
                }
            }
        }
    }

    /// The output `from` now has a chunk id: later accesses name it by `to`.
    /// Returns the unfinished tasks that accessed `from`: they must [`forget`](Self::forget)
    /// `to` when they finish, or `to` would stay in use (and unfreeable) for ever.
    #[must_use]
    pub(crate) fn rename(&mut self, from: DataKey, to: DataKey) -> Vec<TaskId> {
        let Some(st) = self.keys.remove(&from) else {
            return Vec::new();
        };
        let dst = self.keys.entry(to).or_default();
        if dst.writer.is_none() {
            dst.writer = st.writer;
        }
        dst.readers.extend_from_slice(&st.readers);
        let mut accessors = st.readers;
        accessors.extend(st.writer);
        accessors
    }

    /// The unfinished task that writes `key` last, if any.
    pub(crate) fn pending_writer(&self, key: DataKey) -> Option<TaskId> {
        self.keys.get(&key).and_then(|s| s.writer)
    }

    /// True while an unfinished task reads or writes `key`.
    pub(crate) fn in_use(&self, key: DataKey) -> bool {
        self.keys.contains_key(&key)
    }

    /// Number of data with unfinished accesses (for tests and memory checks).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(d: &mut DataDeps, t: u64, c: u64, a: Access) -> Vec<u64> {
        let mut deps = Vec::new();
        d.record(TaskId(t), DataKey::Chunk(ChunkId(c)), a, &mut deps);
        let mut v: Vec<u64> = deps.into_iter().map(|t| t.0).collect();
        v.sort();
        v
    }

    #[test]
    fn edges_follow_serial_order() {
        let mut d = DataDeps::default();
        assert!(rec(&mut d, 1, 7, Access::Read).is_empty());
        assert!(rec(&mut d, 2, 7, Access::Read).is_empty(), "readers share");
        assert_eq!(rec(&mut d, 3, 7, Access::ReadWrite), vec![1, 2], "WAR");
        assert_eq!(rec(&mut d, 4, 7, Access::Read), vec![3], "RAW");
        assert_eq!(rec(&mut d, 5, 7, Access::Write), vec![3, 4], "WAW + WAR");
        assert!(rec(&mut d, 6, 8, Access::Write).is_empty(), "other chunk");
    }

    #[test]
    fn finished_tasks_are_forgotten() {
        let mut d = DataDeps::default();
        rec(&mut d, 1, 7, Access::Write);
        let mut unused = Vec::new();
        d.forget(TaskId(1), &[DataKey::Chunk(ChunkId(7))], |k| unused.push(k));
        assert_eq!(d.tracked(), 0);
        assert_eq!(unused, vec![DataKey::Chunk(ChunkId(7))]);
        assert!(rec(&mut d, 2, 7, Access::Read).is_empty());
    }

    #[test]
    fn rename_carries_pending_readers() {
        let mut d = DataDeps::default();
        let out = DataKey::Output(TaskId(1), 0);
        let mut deps = Vec::new();
        d.record(TaskId(2), out, Access::Read, &mut deps);
        assert_eq!(d.rename(out, DataKey::Chunk(ChunkId(9))), vec![TaskId(2)]);
        assert_eq!(rec(&mut d, 3, 9, Access::ReadWrite), vec![2]);
    }

    #[test]
    fn a_reader_of_a_renamed_output_releases_the_chunk_when_it_finishes() {
        let mut d = DataDeps::default();
        let out = DataKey::Output(TaskId(1), 0);
        let chunk = DataKey::Chunk(ChunkId(9));
        let mut deps = Vec::new();
        d.record(TaskId(2), out, Access::Read, &mut deps);
        assert_eq!(d.rename(out, chunk), vec![TaskId(2)]);
        assert!(d.in_use(chunk));
        // The reader forgets the key it now has (the scheduler updates it on rename).
        let mut unused = Vec::new();
        d.forget(TaskId(2), &[chunk], |k| unused.push(k));
        assert!(!d.in_use(chunk));
        assert_eq!(unused, vec![chunk]);
        assert_eq!(d.tracked(), 0);
    }
}
