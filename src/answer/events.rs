//! Reading events and queueing findings, shared by both loops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use super::stats::{Scheduling, Stats};
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
pub fn raise_priority() -> Scheduling {
    if crate::attribute::procfs::set_thread_nice(-10) {
        Scheduling::Nice
    } else {
        Scheduling::Unchanged
    }
}

/// The real-time priority of the threads that answer permission events:
/// the lowest, above every normal task and below any real-time one the
/// host runs (audio, watchdogs, the kernel's own).
pub const ANSWER_RT_PRIORITY: i32 = 1;

/// Schedule the calling thread as one that answers permission events:
/// real-time (`SCHED_RR`) where the kernel allows it, else nice -10.
///
/// Why real-time: every opener of a marked file waits in the kernel for
/// this thread, and nice -10 is only a weight. Measured with fifty runc
/// starts at once on two loaded cores, the answering thread at nice -10
/// ran 12 ms in 12 s but waited 206 ms on the run queue, 3.5 ms a wakeup:
/// decisions that take 0.2 ms on an idle host passed the 200 ms
/// deadline and were released unjudged. A real-time thread runs as soon
/// as it wakes. It cannot take a core: it sleeps between events, and the
/// kernel's real-time throttle (`sched_rt_runtime_us`) leaves normal tasks
/// their share even if it did not.
pub fn answer_priority() -> Scheduling {
    if crate::attribute::procfs::set_thread_realtime(ANSWER_RT_PRIORITY) {
        Scheduling::Realtime
    } else {
        raise_priority()
    }
}
