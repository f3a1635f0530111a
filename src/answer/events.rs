//! Reading events and queueing findings, shared by both loops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use super::stats::Stats;
use crate::alert::Finding;
use crate::watch::fanotify::{EventSource, RawEvent, parse_events};

/// Read buffer: many records per read(2) syscall.
pub(crate) const READ_BUF: usize = 64 * 1024;
/// How often loops look at the stop flag.
pub(crate) const TICK: Duration = Duration::from_millis(200);

pub(crate) fn send(tx: &SyncSender<Finding>, f: Finding, drops: &AtomicU64) {
    match tx.try_send(f) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read one batch of events; false on timeout or a read error.
pub(crate) fn read_batch(
    src: &dyn EventSource,
    buf: &mut [u8],
    stats: &Stats,
    out: &mut Vec<RawEvent>,
) -> bool {
    read_batch_timeout(src, buf, stats, out, TICK)
}

pub(crate) fn read_batch_timeout(
    src: &dyn EventSource,
    buf: &mut [u8],
    stats: &Stats,
    out: &mut Vec<RawEvent>,
    timeout: Duration,
) -> bool {
    out.clear();
    match src.wait(timeout) {
        Ok(true) => {}
        _ => return false,
    }
    let n = match src.read(buf) {
        Ok(n) => n,
        Err(_) => return false,
    };
    if parse_events(&buf[..n], out).is_err() {
        stats.parse_errors.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Give the calling thread a higher CPU priority (nice -10), best effort.
///
/// Both loops race the processes they watch: an opener waits for the
/// permission answer, and an exec probe must read argv before a short
/// archiver exits. On a loaded host the container's own work would
/// otherwise get the CPU first.
pub fn raise_priority() {
    crate::attribute::procfs::set_thread_nice(-10);
}
