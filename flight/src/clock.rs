//! Worker clocks on the driver's timeline.

use parking_lot::Mutex;

/// The offset between a worker's clock and this process's, estimated as NTP does: a reading
/// taken during a call is assumed to fall midway between sending and receiving, and the call
/// with the shortest round trip so far bounds the error best (half its round trip). The `hello`
/// call, which opens the connection, is slow; heartbeats refine it.
#[derive(Default)]
pub(crate) struct ClockOffset {
    /// (round trip of the best sample in µs, offset in µs).
    best: Mutex<Option<(u64, i64)>>,
}

impl ClockOffset {
    /// A reading `remote_us` of the worker's clock, taken by a call sent at `sent_us` and
    /// answered at `received_us` (this process's clock).
    pub(crate) fn observe(&self, sent_us: u64, received_us: u64, remote_us: u64) {
        let rtt = received_us.saturating_sub(sent_us);
        let midpoint = (sent_us / 2 + received_us / 2) as i64;
        let mut best = self.best.lock();
        if best.is_none_or(|(b, _)| rtt <= b) {
            *best = Some((rtt, midpoint - remote_us as i64));
        }
    }

    /// The worker's clock reading `t`, on this process's timeline.
    pub(crate) fn to_local(&self, t: u64) -> u64 {
        let offset = self.best.lock().map_or(0, |(_, o)| o);
        (t as i64).saturating_add(offset).max(0) as u64
    }
}
