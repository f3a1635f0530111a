//! The permission loop: read permission events, decide each, answer the
//! kernel first, then queue the findings.
//!
//! This thread never logs, writes files or talks to syslog: a stalled sink
//! must not stall an `open(2)` in a container. A full queue drops the
//! finding and counts it (as fapolicyd does). Each decision runs under
//! `catch_unwind`, so even a bug answers: the event is allowed. A watchdog
//! thread answers an event whose decision is stuck past the deadline.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::decide::{self, OpenFindings};
use super::events::{READ_BUF, raise_priority, read_batch, send};
use super::policy::Context;
use crate::alert::Finding;
use crate::config::Action;
use crate::watch::fanotify::{EventSource, FAN_ALLOW, RawEvent};

/// The decision function the permission loop calls: the real one is
/// [`decide::decide_open`]; tests substitute slow or failing ones.
pub type Decide<'a> = &'a (dyn Fn(i32, BorrowedFd<'_>) -> (u32, OpenFindings) + Sync);

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
    inflight: &Inflight,
    stop: &AtomicBool,
) {
    raise_priority();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Vec::with_capacity(64);
    let decide = |pid, fd: BorrowedFd<'_>| decide::decide_open(ctx, pid, fd);
    while !stop.load(Ordering::Relaxed) {
        if read_batch(src, &mut buf, &ctx.stats, &mut events) {
            answer_batch(
                src,
                ctx,
                std::mem::take(&mut events),
                &tx,
                inflight,
                &decide,
            );
        }
    }
}

/// The deadman switch: while the permission loop is stuck on one event
/// (a `/proc` read blocked on a process's mm lock, say), answer it with
/// `FAN_ALLOW` once it is older than `deadline`, and count it as degraded
/// coverage.
pub fn watchdog(
    src: &dyn EventSource,
    ctx: &Context,
    inflight: &Inflight,
    deadline: Duration,
    stop: &AtomicBool,
) {
    let tick = (deadline / 4).max(Duration::from_millis(1));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if inflight.release_stale(src, deadline) {
            ctx.stats.deadline_releases.fetch_add(1, Ordering::Relaxed);
        }
    }
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
        let inflight = std::sync::Arc::new(Inflight::default());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let deadline = Duration::from_millis(50);
        let wd = {
            let (s, c, i, st) = (src.clone(), c.clone(), inflight.clone(), stop.clone());
            std::thread::spawn(move || watchdog(&*s, &c, &i, deadline, &st))
        };
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let events = vec![RawEvent {
            mask: libc::FAN_OPEN_PERM,
            pid: 4242,
            // SAFETY: fd is a fresh descriptor we own.
            fd: Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
            fsid: None,
        }];
        // A decision stuck for 600 ms, as on a blocked /proc read.
        let stuck = |_pid, _fd: BorrowedFd<'_>| {
            std::thread::sleep(Duration::from_millis(600));
            (crate::watch::fanotify::FAN_DENY, Vec::new())
        };
        let (ftx, _frx) = std::sync::mpsc::sync_channel(4);
        answer_batch(&*src, &c, events, &ftx, &inflight, &stuck);
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
}
