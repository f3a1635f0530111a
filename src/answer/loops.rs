//! The decision loops: read events, decide, answer the kernel first, then
//! hand findings to the alert thread through a bounded queue.
//!
//! The permission loop never logs, writes files or talks to syslog: a
//! stalled sink must not stall an `open(2)` in a container. A full queue
//! drops the finding and counts it (as fapolicyd does). Each decision runs
//! under `catch_unwind`, so even a bug answers: the event is allowed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::alert::Finding;
use crate::answer::decide::{self, Context, ExecProbe};
use crate::attribute::exe::ExeClass;
use crate::watch::fanotify::{EventSource, FAN_ALLOW, RawEvent, parse_events};
use crate::watch::resolve::FileId;

/// Read buffer: many records per read(2) syscall.
const READ_BUF: usize = 64 * 1024;
/// How often loops look at the stop flag.
const TICK: Duration = Duration::from_millis(200);

fn send(tx: &SyncSender<Finding>, f: Finding, drops: &AtomicU64) {
    match tx.try_send(f) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read one batch of events; false on timeout or a read error.
fn read_batch(
    src: &dyn EventSource,
    buf: &mut [u8],
    ctx: &Context,
    out: &mut Vec<RawEvent>,
) -> bool {
    read_batch_timeout(src, buf, ctx, out, TICK)
}

fn read_batch_timeout(
    src: &dyn EventSource,
    buf: &mut [u8],
    ctx: &Context,
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
        ctx.stats.parse_errors.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// The decision function the permission loop calls: the real one is
/// [`decide::decide_open`]; tests substitute slow or failing ones.
pub type Decide<'a> = &'a (dyn Fn(i32, BorrowedFd<'_>) -> (u32, decide::OpenFindings) + Sync);

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
                (FAN_ALLOW, [None, None])
            });
        // `kill` happens before the deny is written, while the opener is
        // still held: it dies without ever returning from open(2).
        if let Some(f) = findings
            .iter()
            .flatten()
            .find(|f| f.action == crate::config::Action::Kill && f.denied())
        {
            let outcome = crate::response::kill_outcome(f.process.pid, f.process.start_time_ticks);
            for f in findings.iter_mut().flatten() {
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
        for f in findings.into_iter().flatten() {
            ctx.stats.findings.fetch_add(1, Ordering::Relaxed);
            send(tx, f, &ctx.stats.queue_drops);
        }
    }
}

/// Give the calling thread a higher CPU priority (nice -10), best effort.
///
/// Both loops race the processes they watch: an opener waits for the
/// permission answer, and an exec probe must read argv before a short
/// archiver exits. On a loaded host the container's own work would
/// otherwise get the CPU first.
pub fn raise_priority() {
    set_thread_nice(-10);
}

/// Set the calling thread's nice value (Linux nice is per thread).
pub fn set_thread_nice(nice: i32) {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // a failure (no CAP_SYS_NICE to raise it) leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
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
        if read_batch(src, &mut buf, ctx, &mut events) {
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

/// An exec event waiting for its exec to complete.
struct PendingExec {
    pid: i32,
    fid: FileId,
    class: ExeClass,
    since: Instant,
    /// The next probe is due between `due` and `latest`: any wakeup in
    /// that window probes it, and only `latest` sets a timer. Plain
    /// programs get a wide window so their one probe rides on a wakeup the
    /// loop makes anyway; watched ones get none.
    due: Instant,
    latest: Instant,
    tries: u32,
    /// `/proc/<pid>/stat`, opened by the first probe.
    stat: Option<std::fs::File>,
    _file: std::fs::File,
}

/// First probe of a watched exec: about when a short exec completes. An
/// immediate probe finds the old image nearly every time, and each wakeup
/// of this thread costs a two-core machine's workload measurably.
const FIRST_PROBE: Duration = Duration::from_micros(50);
/// Gap between the early probes of a watched exec.
const PROBE_GAP: Duration = Duration::from_micros(25);
/// Early probes before backing off.
const EARLY_PROBES: u32 = 16;
/// Longest pause between two probes of one pending exec.
const MAX_PROBE_GAP: Duration = Duration::from_millis(1);

/// The pause before probe number `tries + 1` of a pending exec.
fn probe_gap(tries: u32) -> Duration {
    if tries < EARLY_PROBES {
        PROBE_GAP
    } else {
        (PROBE_GAP * (1 << (tries - EARLY_PROBES).min(6))).min(MAX_PROBE_GAP)
    }
}

/// The exec loop: notification events, nothing to answer.
///
/// Events wait in a pending list until their exec completes, so one slow
/// exec never holds up the next (head-of-line blocking would let a short
/// process exit before we read its argv). An event is dropped when a later
/// exec of the same pid supersedes it (a shell `exec`ing its command), when
/// it names an ELF interpreter (the kernel reports `ld.so`'s open with
/// `FAN_OPEN_EXEC` too), or after [`decide::EXEC_SETTLE`].
///
/// Only executables that may be or run an archiver are probed early
/// (watched files and multi-call binaries); interpreters and plain
/// programs get an ignore mark, and launchers are probed once, after
/// [`crate::attribute::exe::PLAIN_DELAY`] (see [`crate::attribute::exe`]). The loop sleeps in
/// one `ppoll` that ends on a new event or when the next probe is due.
pub fn exec_loop(src: &dyn EventSource, ctx: &Context, tx: SyncSender<Finding>, stop: &AtomicBool) {
    raise_priority();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Vec::with_capacity(64);
    let mut pending: Vec<PendingExec> = Vec::new();
    let mut ignores = Ignores::default();
    let mut storm = Storm::new(Instant::now());
    while !stop.load(Ordering::Relaxed) {
        // Every round, not only when an event comes: a file ignored under
        // the old policy sends no event that could trigger the flush.
        ignores.refresh(src, ctx);
        let timeout = pending
            .iter()
            .map(|p| p.latest)
            .min()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()));
        let got = if storm.on {
            // Let the kernel queue the storm's events and take them a tick
            // at a time: one wakeup per tick instead of two per exec.
            std::thread::sleep(timeout.min(STORM_TICK));
            read_batch_timeout(src, &mut buf, ctx, &mut events, Duration::ZERO)
        } else {
            read_batch_timeout(src, &mut buf, ctx, &mut events, timeout)
        };
        if got {
            for ev in events.drain(..) {
                if let Some(mut p) = exec_event(src, ctx, &mut ignores, ev) {
                    // Start events promise every exec: no batching then.
                    if p.class == ExeClass::MultiCall && !ctx.process_events.load(Ordering::Relaxed)
                    {
                        if storm.note(Instant::now()) {
                            ctx.stats.exec_storms.fetch_add(1, Ordering::Relaxed);
                        }
                        if storm.on {
                            // Queued for up to a tick: probe it this round.
                            p.due = p.since;
                            p.latest = p.since;
                            ctx.stats.exec_batched.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A newer exec of the same pid replaces an older one.
                    pending.retain(|q| q.pid != p.pid);
                    pending.push(p);
                }
            }
        }
        let now = Instant::now();
        pending.retain_mut(|p| {
            if p.due > now {
                return true;
            }
            let probe = catch_unwind(AssertUnwindSafe(|| {
                decide::probe_exec(ctx, p.pid, p.fid, p.class, &mut p.stat)
            }))
            .unwrap_or_else(|_| {
                ctx.stats.panics.fetch_add(1, Ordering::Relaxed);
                ExecProbe::Done(None)
            });
            match probe {
                ExecProbe::Done(finding) => {
                    for f in finding.map(|b| *b).unwrap_or_default() {
                        send(&tx, f, &ctx.stats.queue_drops);
                    }
                    false
                }
                ExecProbe::Wait if p.since.elapsed() >= decide::EXEC_SETTLE => {
                    ctx.stats.exec_unsettled.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.exec_timeouts.fetch_add(1, Ordering::Relaxed);
                    false
                }
                ExecProbe::Wait => {
                    p.tries += 1;
                    p.due = Instant::now() + probe_gap(p.tries);
                    p.latest = p.due;
                    true
                }
            }
        });
        storm.roll(Instant::now());
    }
}

/// Multi-call execs per [`STORM_WINDOW`] from which the exec loop batches
/// (640 a second; a busybox loop in a shell runs 2,000 to 3,000).
const STORM_ENTER: u32 = 32;
/// Below this many per window the storm is over (hysteresis, so a rate
/// near the threshold does not flip the mode every window).
const STORM_LEAVE: u32 = 16;
const STORM_WINDOW: Duration = Duration::from_millis(50);
/// In a storm the loop reads and probes once per tick.
const STORM_TICK: Duration = Duration::from_millis(2);

/// The rate of multi-call (busybox) execs, and whether it is a storm.
///
/// Every busybox applet is the same file, so no ignore mark can tell
/// `true` from `tar`: each exec is read, and probed about 50 µs later,
/// once its `comm` names the applet. Those two wakeups per exec cost a
/// tight `busybox` loop on two cores about a fifth of its speed. In a
/// storm the loop sleeps a tick, then takes every queued event and probes
/// each pending exec at once. Applets that exit within the tick are gone
/// by then, so their argv is not read: a storm gives up the seed rule's
/// argument clause for sub-tick applets only. Opens of credential files
/// are permission events in the other group and are judged as always.
#[derive(Debug)]
struct Storm {
    since: Instant,
    count: u32,
    on: bool,
}

impl Storm {
    fn new(now: Instant) -> Self {
        Storm {
            since: now,
            count: 0,
            on: false,
        }
    }

    /// Count one multi-call exec; true when it starts a storm. A storm
    /// starts as soon as a window holds [`STORM_ENTER`] execs, not when
    /// the window closes, so a burst is batched from its 32nd exec.
    fn note(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.count += 1;
        let starts = !self.on && self.count >= STORM_ENTER;
        self.on |= starts;
        starts
    }

    /// Close the window if it is over; a storm ends with a quiet window.
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) < STORM_WINDOW {
            return;
        }
        if self.on && self.count < STORM_LEAVE {
            self.on = false;
        }
        self.count = 0;
        self.since = now;
    }
}

/// Ignore marks the exec loop has placed, and what their verdicts
/// depended on.
#[derive(Debug, Default)]
struct Ignores {
    /// (policy generation, identities generation, process start events,
    /// flushes by the daemon): when any changes, every ignore mark is
    /// dropped (or already was) and files are judged again.
    made_under: (u64, u64, bool, u64),
    /// Ignore marks placed since the last flush.
    count: usize,
}

/// Ignore marks placed before new ones stop (each pins an inode and costs
/// the kernel a mark); they start over when a container goes or the
/// policy changes.
const MAX_IGNORES: usize = 16 * 1024;

impl Ignores {
    /// Drop all ignore marks if the verdicts behind them may have changed.
    fn refresh(&mut self, src: &dyn EventSource, ctx: &Context) {
        let now = (
            ctx.policy().generation,
            ctx.identities.generation(),
            ctx.process_events.load(Ordering::Relaxed),
            ctx.ignores_flushed.load(Ordering::Relaxed),
        );
        if self.made_under != now {
            if self.count > 0 {
                let _ = src.flush_ignores();
            }
            self.made_under = now;
            self.count = 0;
        }
    }

    /// Ask the kernel to stop reporting execs of this file.
    fn add(&mut self, src: &dyn EventSource, ctx: &Context, file: &std::fs::File) -> bool {
        if self.count >= MAX_IGNORES || src.ignore_exec(file.as_fd()).is_err() {
            return false;
        }
        self.count += 1;
        ctx.stats.exec_ignored.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Turn one exec event into a pending probe, or drop it (overflow, an
/// interpreter or a plain program, an unreadable fd).
fn exec_event(
    src: &dyn EventSource,
    ctx: &Context,
    ignores: &mut Ignores,
    ev: RawEvent,
) -> Option<PendingExec> {
    if ev.is_overflow() {
        ctx.stats.overflows.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let file = std::fs::File::from(ev.fd?);
    ctx.stats.exec_events.fetch_add(1, Ordering::Relaxed);
    // The loop refreshed `ignores` this round, before reading events.
    let policy = ctx.policy();
    let starts = ctx.process_events.load(Ordering::Relaxed);
    let (fid, class) =
        ctx.exe_classes
            .classify(&file, &policy.rules, policy.generation, &ctx.identities)?;
    let now = Instant::now();
    let later = || {
        ctx.stats.exec_plain.fetch_add(1, Ordering::Relaxed);
        let due = now + crate::attribute::exe::PLAIN_DELAY;
        (due, due + crate::attribute::exe::PLAIN_DELAY)
    };
    let (due, latest) = match class {
        // Every dynamic exec also opens its interpreter with FAN_OPEN_EXEC,
        // which doubled this thread's wakeups: the kernel can drop those
        // for us. A failed ignore mark only costs the wakeups.
        ExeClass::Interpreter => {
            ignores.add(src, ctx, &file);
            return None;
        }
        // Start events need every exec, however short: probe early.
        _ if starts => (now + FIRST_PROBE, now + FIRST_PROBE),
        ExeClass::Plain if ignores.add(src, ctx, &file) => return None,
        ExeClass::Plain | ExeClass::Launcher => later(),
        ExeClass::Watched | ExeClass::MultiCall => (now + FIRST_PROBE, now + FIRST_PROBE),
    };
    Some(PendingExec {
        pid: ev.pid,
        fid,
        class,
        since: now,
        due,
        latest,
        tries: 0,
        stat: None,
        _file: file,
    })
}

#[cfg(test)]
mod tests {
    //! Drive the permission loop from a socketpair carrying recorded
    //! fanotify records, and check that every event gets exactly one answer.
    use super::*;
    use crate::answer::decide::Policy;
    use crate::config::Action;
    use crate::watch::fanotify::testing::record;
    use std::io;
    use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;

    struct Recorded {
        rx: UnixStream,
        answers: Mutex<Vec<(RawFd, u32)>>,
    }

    impl EventSource for Recorded {
        fn wait(&self, _t: Duration) -> io::Result<bool> {
            Ok(true)
        }
        fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            use std::io::Read;
            (&self.rx).read(buf)
        }
        fn respond(&self, fd: RawFd, response: u32) -> io::Result<()> {
            self.answers.lock().unwrap().push((fd, response));
            Ok(())
        }
    }

    fn ctx() -> Context {
        Context::new(Policy::from_config(&crate::config::Config::default()).unwrap())
    }

    #[test]
    fn every_permission_event_is_answered_once_even_for_vanished_pids() {
        let (mut tx_sock, rx) = UnixStream::pair().unwrap();
        let src = Recorded {
            rx,
            answers: Mutex::new(Vec::new()),
        };
        let c = ctx();
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        // A file of our own, so the "closed" check below is not confused by
        // other test threads reusing fd numbers.
        let marker = std::env::temp_dir().join(format!("keyward-answer-{}", std::process::id()));
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
        assert!(read_batch(&src, &mut buf, &c, &mut events));
        assert_eq!(events.len(), 4);
        let decide = |pid, fd: BorrowedFd<'_>| decide::decide_open(&c, pid, fd);
        answer_batch(&src, &c, events, &ftx, &Inflight::default(), &decide);
        let answers = src.answers.lock().unwrap().clone();
        assert_eq!(answers.len(), 3);
        for (i, (fd, r)) in answers.iter().enumerate() {
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
        std::fs::remove_file(&marker).unwrap();
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

    struct Timed {
        t0: std::time::Instant,
        answers: Mutex<Vec<(RawFd, u32, Duration)>>,
    }

    impl EventSource for Timed {
        fn wait(&self, _t: Duration) -> io::Result<bool> {
            Ok(true)
        }
        fn read(&self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn respond(&self, fd: RawFd, response: u32) -> io::Result<()> {
            self.answers
                .lock()
                .unwrap()
                .push((fd, response, self.t0.elapsed()));
            Ok(())
        }
    }

    #[test]
    fn watchdog_answers_a_stuck_decision_within_the_deadline() {
        let src = std::sync::Arc::new(Timed {
            t0: std::time::Instant::now(),
            answers: Mutex::new(Vec::new()),
        });
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
        }];
        // A decision stuck for 600 ms, as on a blocked /proc read.
        let stuck = |_pid, _fd: BorrowedFd<'_>| {
            std::thread::sleep(Duration::from_millis(600));
            (crate::watch::fanotify::FAN_DENY, [None, None])
        };
        let (ftx, _frx) = std::sync::mpsc::sync_channel(4);
        answer_batch(&*src, &c, events, &ftx, &inflight, &stuck);
        stop.store(true, Ordering::Relaxed);
        wd.join().unwrap();
        let answers = src.answers.lock().unwrap().clone();
        assert_eq!(answers[0].0, fd);
        assert_eq!(answers[0].1, FAN_ALLOW, "the watchdog releases with allow");
        assert!(
            answers[0].2 < Duration::from_millis(300),
            "released after {:?}",
            answers[0].2
        );
        assert_eq!(c.stats.snapshot().deadline_releases, 1);
    }

    /// Counts ignore marks and flushes instead of making them.
    #[derive(Default)]
    struct Ignoring {
        ignored: AtomicU64,
        flushes: AtomicU64,
    }

    impl EventSource for Ignoring {
        fn wait(&self, _t: Duration) -> io::Result<bool> {
            Ok(false)
        }
        fn read(&self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn respond(&self, _fd: RawFd, _response: u32) -> io::Result<()> {
            Ok(())
        }
        fn ignore_exec(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn flush_ignores(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn ignore_marks_start_over_after_any_flush_or_policy_change() {
        let c = ctx();
        let src = Ignoring::default();
        let file = std::fs::File::open("/bin/true").unwrap();
        let mut ign = Ignores::default();
        ign.refresh(&src, &c);
        assert!(ign.add(&src, &c, &file));
        assert!(ign.add(&src, &c, &file));
        assert_eq!(ign.count, 2);
        ign.refresh(&src, &c);
        assert_eq!((ign.count, src.flushes.load(Ordering::Relaxed)), (2, 0));
        // A container went and the daemon flushed: the count starts over,
        // so a long-lived daemon never runs into MAX_IGNORES for good.
        c.ignores_flushed.fetch_add(1, Ordering::Relaxed);
        ign.refresh(&src, &c);
        assert_eq!(ign.count, 0);
        // A new policy (a reload) flushes the marks placed under the old.
        assert!(ign.add(&src, &c, &file));
        *c.policy.write().unwrap() =
            std::sync::Arc::new(Policy::from_config(&crate::config::Config::default()).unwrap());
        let before = src.flushes.load(Ordering::Relaxed);
        ign.refresh(&src, &c);
        assert_eq!(src.flushes.load(Ordering::Relaxed), before + 1);
        assert_eq!(ign.count, 0);
        // At the cap, no more marks: those execs are read later instead.
        ign.count = MAX_IGNORES;
        assert!(!ign.add(&src, &c, &file));
    }

    #[test]
    fn a_storm_starts_at_its_threshold_and_ends_with_a_quiet_window() {
        let t0 = Instant::now();
        let step = STORM_WINDOW / (2 * STORM_ENTER);
        let mut s = Storm::new(t0);
        // One short of the threshold inside one window: no storm.
        let mut t = t0;
        for _ in 1..STORM_ENTER {
            assert!(!s.note(t));
            t += step;
        }
        assert!(!s.on);
        // The threshold exec starts it at once, and only once.
        assert!(s.note(t));
        assert!(s.on);
        assert!(!s.note(t));
        // A new window at the leave threshold keeps it on (hysteresis)...
        t = t0 + STORM_WINDOW;
        for _ in 0..STORM_LEAVE {
            assert!(!s.note(t));
        }
        s.roll(t + STORM_WINDOW);
        assert!(s.on, "{s:?}");
        // ...and a window below it ends it.
        t += STORM_WINDOW;
        for _ in 1..STORM_LEAVE {
            s.note(t);
        }
        s.roll(t + STORM_WINDOW);
        assert!(!s.on, "{s:?}");
        // Slow execs never add up to a storm across windows.
        let mut s = Storm::new(t0);
        for i in 0..(10 * STORM_ENTER) {
            assert!(!s.note(t0 + STORM_WINDOW * i / (STORM_ENTER / 2)));
        }
    }
}
