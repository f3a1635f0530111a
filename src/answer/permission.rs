//! The permission loop: read permission events, decide each, answer the
//! kernel first, then queue the findings.
//!
//! This thread never logs, writes files or talks to syslog: a stalled sink
//! must not stall an `open(2)` in a container. A full queue drops the
//! finding and counts it (as fapolicyd does). Each decision runs under
//! `catch_unwind`, so even a bug answers: the event is allowed. A watchdog
//! thread answers an event whose decision is stuck past the deadline.
//!
//! **The daemon's own opens.** The kernel holds every opener of a marked
//! inode until the group answers, the daemon included; the permission loop
//! allows the daemon's own pid, but only if it is free to read the event.
//! Two ways it is not, both seen on these machines:
//!
//! * Reading an event makes the kernel open the event's file for the fd it
//!   hands over. For a file on an overlay, overlayfs then opens the
//!   *backing* file too, and (on 6.18 at least) that open is reported like
//!   any other: if the backing inode, or its directory, carries a
//!   permission mark (a plain-directory rootfs that is also another
//!   container's overlay layer), the read(2) itself waits for an answer
//!   only the reading thread could give.
//! * A decision that opens a marked file (a reader's `/proc/<pid>/exe` that
//!   is a derived credential, for instance) waits the same way.
//!
//! Either would leave every later opener of a marked file hanging. So the
//! watchdog also watches for a permission loop stuck in a read or a
//! decision for a whole tick while events wait, and then starts a rescue
//! reader: a second, short-lived reader of the same group that decides
//! what it reads exactly as the loop does (the daemon's own events are
//! allowed at once), until the queue is empty. If a rescue reader is stuck
//! in turn, another starts, up to [`MAX_RESCUERS`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::decide::{self, OpenFindings};
use super::events::{READ_BUF, answer_priority, read_batch, read_batch_timeout, send};
use super::policy::Context;
use crate::alert::Finding;
use crate::config::Action;
use crate::watch::fanotify::{EventSource, FAN_ALLOW, METADATA_LEN, RawEvent};

/// The decision function the permission loop calls: the real one is
/// [`decide::decide_open`]; tests substitute slow or failing ones.
pub type Decide<'a> = &'a (dyn Fn(i32, BorrowedFd<'_>) -> (u32, OpenFindings) + Sync);

/// Most rescue readers at once.
pub const MAX_RESCUERS: usize = 4;
/// Most events one rescue reader decides before it leaves the rest to
/// the permission loop (or to the next rescue).
const RESCUE_EVENTS: usize = 4096;

/// The permission event being decided right now, shared with the watchdog.
#[derive(Debug, Default)]
pub struct Inflight {
    slot: Mutex<Option<(RawFd, Instant)>>,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(RawFd, Instant)>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer the in-flight event with `FAN_ALLOW` if it has waited longer
    /// than `deadline`. The answering thread clears the slot (under this
    /// lock) before it closes the event's fd, so the fd we answer here is
    /// still that event's, never a reused number. If the answering thread
    /// answers later too, the kernel refuses the second answer (ENOENT).
    pub fn release_stale(&self, src: &dyn EventSource, deadline: Duration) -> bool {
        let mut slot = self.lock();
        match *slot {
            Some((fd, since)) if since.elapsed() >= deadline => {
                let _ = src.respond(fd, FAN_ALLOW);
                *slot = None;
                true
            }
            _ => false,
        }
    }

    fn since(&self) -> Option<Instant> {
        self.lock().map(|(_, t)| t)
    }
}

/// One reader of the permission group, as the watchdog sees it: whether
/// it is inside read(2) or deciding an event, and since when.
#[derive(Debug, Default)]
pub struct Lane {
    reading: Mutex<Option<Instant>>,
    pub inflight: Inflight,
}

impl Lane {
    fn set_reading(&self, on: bool) {
        *self.reading.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Instant::now);
    }

    /// Since when this reader has been busy (reading or deciding), if it is.
    fn busy_since(&self) -> Option<Instant> {
        let reading = *self.reading.lock().unwrap_or_else(|e| e.into_inner());
        match (reading, self.inflight.since()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn stuck(&self, longer_than: Duration) -> bool {
        self.busy_since()
            .is_some_and(|t| t.elapsed() >= longer_than)
    }
}

/// The readers of the permission group: the permission loop's lane and
/// the rescue readers' (see the module doc).
#[derive(Debug, Default)]
pub struct Lanes {
    pub main: Lane,
    rescue: Mutex<Vec<Arc<Lane>>>,
}

impl Lanes {
    fn rescuers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Lane>>> {
        self.rescue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every reader has been busy for `longer_than`, and another
    /// rescue reader may start.
    fn need_rescue(&self, longer_than: Duration) -> bool {
        let rescue = self.rescuers();
        rescue.len() < MAX_RESCUERS
            && self.main.stuck(longer_than)
            && rescue.iter().all(|l| l.stuck(longer_than))
    }

    /// Release every reader's decision older than `deadline`; how many.
    fn release_stale(&self, src: &dyn EventSource, deadline: Duration) -> u64 {
        let mut n = u64::from(self.main.inflight.release_stale(src, deadline));
        for lane in self.rescuers().iter() {
            n += u64::from(lane.inflight.release_stale(src, deadline));
        }
        n
    }
}

/// Answer every permission event in one batch, queueing findings.
pub fn answer_batch(
    src: &dyn EventSource,
    ctx: &Context,
    events: Vec<RawEvent>,
    tx: &SyncSender<Finding>,
    inflight: &Inflight,
    decide: Decide<'_>,
) {
    for ev in events {
        if ev.is_overflow() {
            ctx.stats.overflows.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !ev.is_permission() {
            continue;
        }
        let Some(fd) = ev.fd else { continue };
        let started = Instant::now();
        *inflight.lock() = Some((fd.as_raw_fd(), started));
        let (response, mut findings) =
            catch_unwind(AssertUnwindSafe(|| decide(ev.pid, fd.as_fd()))).unwrap_or_else(|_| {
                ctx.stats.panics.fetch_add(1, Ordering::Relaxed);
                (FAN_ALLOW, Vec::new())
            });
        // `kill` happens before the deny is written, while the opener is
        // still held: it dies without ever returning from open(2).
        if let Some(f) = findings
            .iter()
            .find(|f| f.action == Action::Kill && f.denied())
        {
            let outcome = crate::response::kill_outcome(f.process.pid, f.process.start_time_ticks);
            for f in findings.iter_mut() {
                f.response = Some(outcome.clone());
            }
        }
        {
            // Answer and clear the slot under the lock, so the watchdog
            // either answered already (and ours is refused) or never will.
            let mut slot = inflight.lock();
            if src.respond(fd.as_raw_fd(), response).is_err() {
                ctx.stats.respond_errors.fetch_add(1, Ordering::Relaxed);
            }
            *slot = None;
        }
        ctx.stats.record_latency(started.elapsed());
        if response == FAN_ALLOW {
            ctx.stats.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            ctx.stats.denied.fetch_add(1, Ordering::Relaxed);
        }
        // The fd closes here, after the answer.
        drop(fd);
        for f in findings {
            ctx.stats.findings.fetch_add(1, Ordering::Relaxed);
            send(tx, f, &ctx.stats.queue_drops);
        }
    }
}

/// The permission loop: runs until `stop` is set.
pub fn permission_loop(
    src: &dyn EventSource,
    ctx: &Context,
    tx: SyncSender<Finding>,
    lane: &Lane,
    stop: &AtomicBool,
) {
    *ctx.stats
        .answer_scheduling
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = answer_priority();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Vec::with_capacity(64);
    let decide = |pid, fd: BorrowedFd<'_>| decide::decide_open(ctx, pid, fd);
    while !stop.load(Ordering::Relaxed) {
        if read_batch_lane(src, lane, &mut buf, ctx, &mut events, None) {
            answer_batch(
                src,
                ctx,
                std::mem::take(&mut events),
                &tx,
                &lane.inflight,
                &decide,
            );
        }
    }
}

/// [`read_batch`] with the lane marked as reading while read(2) runs
/// (the wait before it is not reading: nothing is held then). `None` waits
/// the loops' usual tick; `Some(ZERO)` only takes what is queued.
fn read_batch_lane(
    src: &dyn EventSource,
    lane: &Lane,
    buf: &mut [u8],
    ctx: &Context,
    events: &mut Vec<RawEvent>,
    wait: Option<Duration>,
) -> bool {
    let src = MarkReading { src, lane };
    match wait {
        None => read_batch(&src, buf, &ctx.stats, events),
        Some(t) => read_batch_timeout(&src, buf, &ctx.stats, events, t),
    }
}

/// An event source that marks its lane as reading for the span of each
/// read(2), and only that.
struct MarkReading<'a> {
    src: &'a dyn EventSource,
    lane: &'a Lane,
}

impl EventSource for MarkReading<'_> {
    fn wait(&self, timeout: Duration) -> std::io::Result<bool> {
        self.src.wait(timeout)
    }
    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.lane.set_reading(true);
        let n = self.src.read(buf);
        self.lane.set_reading(false);
        n
    }
    fn respond(&self, fd: RawFd, response: u32) -> std::io::Result<()> {
        self.src.respond(fd, response)
    }
}

/// A rescue reader: take what is queued, one small read at a time, and
/// decide it as the permission loop does, until the queue is empty (or
/// [`RESCUE_EVENTS`] were read). A small buffer, so a read that is itself
/// held (see the module doc) holds few events with it.
fn rescue(
    src: &dyn EventSource,
    ctx: &Context,
    tx: &SyncSender<Finding>,
    lane: &Lane,
    decide: Decide<'_>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 8 * METADATA_LEN];
    let mut events = Vec::with_capacity(8);
    let mut read = 0;
    while read < RESCUE_EVENTS && !stop.load(Ordering::Relaxed) {
        if !read_batch_lane(src, lane, &mut buf, ctx, &mut events, Some(Duration::ZERO)) {
            break;
        }
        read += events.len().max(1);
        answer_batch(
            src,
            ctx,
            std::mem::take(&mut events),
            tx,
            &lane.inflight,
            decide,
        );
    }
}

/// The deadman switch, and the rescue of a stuck permission loop.
///
/// While a reader is stuck on one event (a `/proc` read blocked on a
/// process's mm lock, say), answer it with `FAN_ALLOW` once it is older
/// than `deadline`, and count it as degraded coverage. While every reader
/// has been stuck for a whole tick and events wait, start a rescue reader
/// (see the module doc); it ends when the queue is empty.
pub fn watchdog(
    src: &(dyn EventSource + Sync),
    ctx: &Context,
    tx: SyncSender<Finding>,
    lanes: &Lanes,
    deadline: Duration,
    stop: &AtomicBool,
) {
    // The watchdog must wake on time to release a stalled decision, on a
    // host as loaded as the one that stalled it.
    answer_priority();
    let decide = |pid, fd: BorrowedFd<'_>| decide::decide_open(ctx, pid, fd);
    watchdog_with(src, ctx, tx, lanes, deadline, stop, &decide);
}

/// [`watchdog`] with the rescue readers' decision function given.
pub fn watchdog_with(
    src: &(dyn EventSource + Sync),
    ctx: &Context,
    tx: SyncSender<Finding>,
    lanes: &Lanes,
    deadline: Duration,
    stop: &AtomicBool,
    decide: Decide<'_>,
) {
    let tick = (deadline / 4).max(Duration::from_millis(1));
    std::thread::scope(|s| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            let released = lanes.release_stale(src, deadline);
            ctx.stats
                .deadline_releases
                .fetch_add(released, Ordering::Relaxed);
            if !lanes.need_rescue(tick) || !matches!(src.wait(Duration::ZERO), Ok(true)) {
                continue;
            }
            let lane = Arc::new(Lane::default());
            let mine = lane.clone();
            lanes.rescuers().push(lane.clone());
            ctx.stats.rescues.fetch_add(1, Ordering::Relaxed);
            let tx = tx.clone();
            let started = std::thread::Builder::new()
                .name("keyward-rescue".into())
                .spawn_scoped(s, move || {
                    // A new thread does not inherit the watchdog's
                    // real-time policy (`SCHED_RESET_ON_FORK`).
                    answer_priority();
                    rescue(src, ctx, &tx, &lane, decide, stop);
                    lanes.rescuers().retain(|l| !Arc::ptr_eq(l, &lane));
                });
            if started.is_err() {
                // No thread to be had: the next tick tries again.
                lanes.rescuers().retain(|l| !Arc::ptr_eq(l, &mine));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! Drive the permission loop from a socketpair carrying recorded
    //! fanotify records, and check that every event gets exactly one answer.
    use super::*;
    use crate::watch::fanotify::testing::{Recording, record};
    use std::os::fd::{IntoRawFd, OwnedFd};
    use std::sync::atomic::AtomicU64;

    fn ctx() -> Context {
        Context::with_defaults()
    }

    #[test]
    fn every_permission_event_is_answered_once_even_for_vanished_pids() {
        let (src, mut tx_sock) = Recording::fed();
        let c = ctx();
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        // A file of our own, so the "closed" check below is not confused by
        // other test threads reusing fd numbers.
        let tmp = crate::testdir::TempDir::new("answer");
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "x").unwrap();
        for pid in [c.self_pid, i32::MAX, 1] {
            let fd = std::fs::File::open(&marker).unwrap().into_raw_fd();
            fds.push(fd);
            bytes.extend(record(libc::FAN_OPEN_PERM, fd, pid));
        }
        // A notification record and an overflow are not answered.
        bytes.extend(record(libc::FAN_Q_OVERFLOW, -1, 0));
        use std::io::Write;
        tx_sock.write_all(&bytes).unwrap();
        let (ftx, _frx) = std::sync::mpsc::sync_channel(4);
        let mut buf = vec![0u8; 4096];
        let mut events = Vec::new();
        assert!(read_batch(&src, &mut buf, &c.stats, &mut events));
        assert_eq!(events.len(), 4);
        let decide = |pid, fd: BorrowedFd<'_>| decide::decide_open(&c, pid, fd);
        answer_batch(&src, &c, events, &ftx, &Inflight::default(), &decide);
        let answers = src.answers();
        assert_eq!(answers.len(), 3);
        for (i, (fd, r, _)) in answers.iter().enumerate() {
            assert_eq!(*fd, fds[i]);
            assert_eq!(*r, FAN_ALLOW);
        }
        let s = c.stats.snapshot();
        assert_eq!(s.perm_events, 3);
        assert_eq!(s.overflows, 1);
        assert_eq!(s.allowed, 3);
        // The fds were closed after answering: none still names the marker.
        let still_open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker))
            .count();
        assert_eq!(still_open, 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = std::sync::mpsc::sync_channel::<Finding>(0);
        let drops = AtomicU64::new(0);
        let f = Finding {
            at: std::time::SystemTime::now(),
            container: Default::default(),
            process: Default::default(),
            trigger: crate::alert::Trigger::Exec {
                matched: crate::rules::ExecMatch {
                    archiver: crate::rules::ArchiverHit::Name { name: "tar".into() },
                    paths: vec![],
                },
            },
            action: Action::Alert,
            response: None,
        };
        send(&tx, f, &drops);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn watchdog_answers_a_stuck_decision_within_the_deadline() {
        let src = std::sync::Arc::new(Recording::idle());
        let c = std::sync::Arc::new(ctx());
        let lanes = std::sync::Arc::new(Lanes::default());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let deadline = Duration::from_millis(50);
        let (ftx, _frx) = std::sync::mpsc::sync_channel(4);
        let wd = {
            let (s, c, l, st, t) = (
                src.clone(),
                c.clone(),
                lanes.clone(),
                stop.clone(),
                ftx.clone(),
            );
            std::thread::spawn(move || watchdog(&*s, &c, t, &l, deadline, &st))
        };
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let events = vec![RawEvent {
            mask: libc::FAN_OPEN_PERM,
            pid: 4242,
            // SAFETY: fd is a fresh descriptor we own.
            fd: Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
            fsid: None,
            dir_entry: None,
        }];
        // A decision stuck for 600 ms, as on a blocked /proc read.
        let stuck = |_pid, _fd: BorrowedFd<'_>| {
            std::thread::sleep(Duration::from_millis(600));
            (crate::watch::fanotify::FAN_DENY, Vec::new())
        };
        answer_batch(&*src, &c, events, &ftx, &lanes.main.inflight, &stuck);
        stop.store(true, Ordering::Relaxed);
        wd.join().unwrap();
        let answers = src.answers();
        assert_eq!(answers[0].0, fd);
        assert_eq!(answers[0].1, FAN_ALLOW, "the watchdog releases with allow");
        assert!(
            answers[0].2 < Duration::from_millis(300),
            "released after {:?}",
            answers[0].2
        );
        assert_eq!(c.stats.snapshot().deadline_releases, 1);
    }

    /// The permission loop stuck on an event that waits for another of
    /// the daemon's own (as a read(2) of an overlay file whose backing file
    /// is marked does): a rescue reader takes the daemon's event and allows
    /// it, the stuck one then finishes with its own verdict, before the
    /// deadline would have released it unjudged.
    #[test]
    fn a_rescue_reader_frees_a_loop_stuck_on_the_daemons_own_event() {
        use std::io::Write;
        let (src, mut feed) = Recording::fed();
        let src = std::sync::Arc::new(src);
        let c = std::sync::Arc::new(ctx());
        let lanes = std::sync::Arc::new(Lanes::default());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let tmp = crate::testdir::TempDir::new("rescue");
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "x").unwrap();
        let open = || std::fs::File::open(&marker).unwrap().into_raw_fd();
        let (stuck_fd, own_fd) = (open(), open());
        let mut bytes = record(libc::FAN_OPEN_PERM, stuck_fd, 4242);
        feed.write_all(&bytes).unwrap();
        // The stuck decision holds until the daemon's own event (queued
        // behind it) has been answered, for 5 s at most.
        let self_pid = c.self_pid;
        let answered = {
            let src = src.clone();
            move |fd: RawFd| src.answers().iter().any(|a| a.0 == fd)
        };
        let decide = move |pid: i32, _fd: BorrowedFd<'_>| {
            if pid == self_pid {
                return (FAN_ALLOW, Vec::new());
            }
            let t0 = Instant::now();
            while !answered(own_fd) && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(2));
            }
            (crate::watch::fanotify::FAN_DENY, Vec::new())
        };
        let deadline = Duration::from_millis(800);
        let (ftx, _frx) = std::sync::mpsc::sync_channel(16);
        let decide = std::sync::Arc::new(decide);
        let wd = {
            let (s, c, l, st, t, d) = (
                src.clone(),
                c.clone(),
                lanes.clone(),
                stop.clone(),
                ftx.clone(),
                decide.clone(),
            );
            std::thread::spawn(move || watchdog_with(&*s, &c, t, &l, deadline, &st, &*d))
        };
        let main = {
            let (s, c, l, t, d) = (src.clone(), c.clone(), lanes.clone(), ftx, decide);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let mut events = Vec::new();
                assert!(read_batch(&*s, &mut buf, &c.stats, &mut events));
                answer_batch(&*s, &c, events, &t, &l.main.inflight, &*d);
            })
        };
        // The daemon's own event arrives once the loop is deciding.
        while lanes.main.busy_since().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        bytes = record(libc::FAN_OPEN_PERM, own_fd, self_pid);
        feed.write_all(&bytes).unwrap();
        main.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        wd.join().unwrap();
        let answers = src.answers();
        let of = |fd| answers.iter().find(|a| a.0 == fd).copied().unwrap();
        assert_eq!(of(own_fd).1, FAN_ALLOW);
        assert_eq!(
            of(stuck_fd).1,
            crate::watch::fanotify::FAN_DENY,
            "the stuck decision ended with its own verdict: {answers:?}"
        );
        assert!(
            of(stuck_fd).2 < Duration::from_millis(800),
            "freed before the deadline: {answers:?}"
        );
        let s = c.stats.snapshot();
        assert!(s.rescues >= 1, "{s:?}");
        assert_eq!(s.deadline_releases, 0);
    }
}
