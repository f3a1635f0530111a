//! The exec loop: exec notifications, judged once each exec has
//! completed, with nothing to answer.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::decide::{self, ExecProbe};
use super::events::{READ_BUF, TICK, raise_priority, read_batch_timeout, send};
use super::policy::Context;
use crate::alert::Finding;
use crate::attribute::exe::{self, ExeClass};
use crate::watch::fanotify::{self, EventSource, ExecScope, RawEvent};
use crate::watch::resolve::FileId;

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
    /// When its event was read, in boot ticks (`procfs::boot_ticks_now`).
    at: Option<u64>,
    file: std::fs::File,
}

impl PendingExec {
    /// The exec thread is done with it: a pipe reader found while it
    /// exec'd is named by it.
    fn settled(&self, ctx: &Context) {
        use std::os::fd::AsFd;
        ctx.follow.exec_settled(self.pid, self.at, || {
            crate::watch::fanotify::fd_path(self.file.as_fd())
        });
    }
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
/// [`exe::PLAIN_DELAY`] (see [`crate::attribute::exe`]). The loop sleeps in
/// one `ppoll` that ends on a new event or when the next probe is due.
pub fn exec_loop(src: &dyn EventSource, ctx: &Context, tx: SyncSender<Finding>, stop: &AtomicBool) {
    raise_priority();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Vec::with_capacity(64);
    let mut pending: Vec<PendingExec> = Vec::new();
    let mut ignores = Ignores::default();
    let mut holds = Holds::default();
    let mut storm = Storm::new(Instant::now());
    while !stop.load(Ordering::Relaxed) {
        // Every round, not only when an event comes: a file ignored under
        // the old policy sends no event that could trigger the flush.
        if ignores.refresh(src, ctx) {
            holds.forget();
        }
        let now = Instant::now();
        holds.lift(src, &mut ignores, now, |id| {
            let watched = ctx
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .container(id)
                .is_some();
            watched && !ctx.follow.has_taint(id) && !ctx.process_events.load(Ordering::Relaxed)
        });
        let timeout = pending
            .iter()
            .map(|p| p.latest)
            .chain(holds.next_check())
            .min()
            .map_or(TICK, |t| t.saturating_duration_since(Instant::now()));
        let got = if storm.on {
            // Let the kernel queue the storm's events and take them a tick
            // at a time: one wakeup per tick instead of two per exec. Wait
            // for the first event, though: a held storm sends none, and a
            // tick timer with nothing to read costs a wakeup all the same.
            let ready = !pending.is_empty() || src.wait(timeout).unwrap_or(false);
            if ready {
                std::thread::sleep(timeout.min(STORM_TICK));
            }
            ready && read_batch_timeout(src, &mut buf, &ctx.stats, &mut events, Duration::ZERO)
        } else {
            read_batch_timeout(src, &mut buf, &ctx.stats, &mut events, timeout)
        };
        if got {
            for ev in events.drain(..) {
                if let Some(mut p) = exec_event(src, ctx, &mut ignores, &mut holds, ev) {
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
                    p.settled(ctx);
                    for f in finding.map(|b| *b).unwrap_or_default() {
                        send(&tx, f, &ctx.stats.queue_drops);
                    }
                    false
                }
                ExecProbe::Wait if p.since.elapsed() >= decide::EXEC_SETTLE => {
                    p.settled(ctx);
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
    /// Drop all ignore marks if the verdicts behind them may have changed;
    /// true when the marks are gone (flushed here or by the daemon).
    fn refresh(&mut self, src: &dyn EventSource, ctx: &Context) -> bool {
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
            return true;
        }
        false
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

/// Multi-call execs of one file in one container within [`STORM_WINDOW`]
/// from which that file is held (320 a second). Every exec before that is
/// probed one by one, several wakeups each: the threshold is what each
/// hold costs.
const HOLD_ENTER: u32 = 16;
/// How long a held file's execs go unreported; then they are counted
/// again, and a storm that goes on is held again from its 16th exec.
const HOLD_FOR: Duration = Duration::from_secs(1);
/// A storm held again within this long of its lift is the same storm: its
/// next hold is twice as long, up to [`HOLD_MAX`]. Each new hold costs the
/// execs that show the storm again, probed one by one.
const HOLD_AGAIN: Duration = Duration::from_millis(200);
/// The longest hold.
const HOLD_MAX: Duration = Duration::from_secs(4);
/// Files held at once, daemon-wide.
const MAX_HOLDS: usize = 256;
/// (file, container) pairs counted before the counts start over.
const MAX_COUNTED: usize = 4096;

/// One file as one container reaches it: the mount its exec came through,
/// and the inode.
type HoldKey = (u64, FileId);

/// A multi-call file whose execs the kernel does not report for now.
#[derive(Debug)]
struct Hold {
    key: HoldKey,
    container: String,
    /// The fd the ignore mark was placed through, to take it back.
    file: std::fs::File,
    until: Instant,
    length: Duration,
}

/// Storms held per container: the second stage of [`Storm`].
///
/// Batching still reads every exec event: on an overlay the kernel opens
/// two files per event, we stat the process, close them again, about
/// 45 µs of this thread per `busybox true` (docs/performance.md). A
/// multi-call file that one container execs [`HOLD_ENTER`] times within a
/// window is *held*: an ignore mark on it, so the kernel stops reporting
/// its execs, for [`HOLD_FOR`]. Then it is counted again; a storm that
/// is held again at once is held twice as long each time, up to
/// [`HOLD_MAX`]. Only the
/// storming container's own file is held: the file must have been
/// reached through that container's root mount, the root must be its own
/// overlay (no other registered container's root on the same
/// filesystem), so the inode the mark sits on is one no other container
/// can exec. Anything else (a shared rootfs directory, a bind-mounted
/// busybox) is only batched, as before.
///
/// What a hold gives up, stated plainly: for up to [`HOLD_MAX`], that
/// container's applets are not judged at exec, so the seed rule's
/// argument clause misses an applet that names a credential it never
/// opens (storm batching already missed most of those). Opens of
/// credentials are permission events in the other group, judged for
/// every process as always, with the opener's argv. No hold is made, and
/// every hold is lifted, while `alerts.process_events` is on (start
/// events promise every exec) or while the container has a tainted pipe
/// (an archiver exec'd on it is followed from its exec).
#[derive(Debug, Default)]
struct Holds {
    /// Recent multi-call execs per key: the window's start and count.
    counts: HashMap<HoldKey, (Instant, u32)>,
    held: Vec<Hold>,
    /// Holds that ran their time: when, and how long they were.
    ended: HashMap<HoldKey, (Instant, Duration)>,
    /// Root mount and device of the registered containers, by (id, init
    /// pid).
    roots: HashMap<(String, i32), (u64, u64)>,
}

impl Holds {
    /// Count one multi-call exec; true when the key reaches the threshold
    /// in this window and is not held already.
    fn note(&mut self, key: HoldKey, now: Instant) -> bool {
        if self.counts.len() >= MAX_COUNTED && !self.counts.contains_key(&key) {
            self.counts.clear();
        }
        let e = self.counts.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= STORM_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 == HOLD_ENTER && self.held.len() < MAX_HOLDS && !self.held.iter().any(|h| h.key == key)
    }

    /// One multi-call exec by `pid` of `file`: hold the file when its
    /// container storms and owns it alone.
    fn consider(
        &mut self,
        src: &dyn EventSource,
        ctx: &Context,
        ignores: &mut Ignores,
        fid: FileId,
        file: &std::fs::File,
        now: Instant,
    ) {
        let Ok((mount, _)) = fanotify::mount_of(file.as_fd()) else {
            return;
        };
        let key = (mount, fid);
        if !self.note(key, now) {
            return;
        }
        if let Some(container) = self.sole_owner(ctx, mount, file) {
            self.hold(src, ctx, ignores, key, container, file, now);
        }
    }

    /// The container that alone can exec `file`, reached through `mount`;
    /// `None` when any other container could, or when that cannot be told.
    /// Found by its root mount, not by the exec'ing pid: in a storm that
    /// applet is often gone by the time its event is read.
    fn sole_owner(&mut self, ctx: &Context, mount: u64, file: &std::fs::File) -> Option<String> {
        if fanotify::exec_scope(file.as_fd()) != ExecScope::Filesystem {
            return None;
        }
        // The containers, copied out: the roots are read from /proc below,
        // and no I/O may happen under the index lock. A reader that
        // sleeps in it, with a registration's writer waiting behind it,
        // holds up the permission loop's lookups (priority inversion).
        let views: Vec<(String, i32)> = {
            let index = ctx.index.read().unwrap_or_else(|e| e.into_inner());
            index
                .views()
                .map(|v| (v.reference.id.clone(), v.init_pid))
                .collect()
        };
        self.roots.retain(|k, _| views.contains(k));
        let mut owner = None;
        let mut devs = Vec::with_capacity(views.len());
        for (id, init_pid) in &views {
            let k = (id.clone(), *init_pid);
            let root = match self.roots.get(&k) {
                Some(r) => *r,
                // A root that cannot be read is a container whose init is
                // gone: nothing of it runs any more.
                None => match fanotify::mount_of_path(format!("/proc/{init_pid}/root").as_ref()) {
                    Ok(r) => *self.roots.entry(k).or_insert(r),
                    Err(_) => continue,
                },
            };
            // Through the container's root mount, not a volume or a bind.
            if root.0 == mount {
                owner = Some((id, root.1));
            }
            devs.push((id, root.1));
        }
        let (id, dev) = owner?;
        // The root's device is its overlay's own (directories always
        // report it): no other container may have its root there.
        if devs.iter().any(|(o, d)| *o != id && *d == dev) || ctx.follow.has_taint(id) {
            return None;
        }
        Some(id.clone())
    }

    /// Place the ignore mark that holds `file` for [`HOLD_FOR`].
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        src: &dyn EventSource,
        ctx: &Context,
        ignores: &mut Ignores,
        key: HoldKey,
        container: String,
        file: &std::fs::File,
        now: Instant,
    ) {
        if ignores.count >= MAX_IGNORES {
            return;
        }
        let Ok(file) = file.try_clone() else {
            return;
        };
        if src.ignore_exec(file.as_fd()).is_err() {
            return;
        }
        ignores.count += 1;
        ctx.stats.exec_holds.fetch_add(1, Ordering::Relaxed);
        self.counts.remove(&key);
        let length = match self.ended.remove(&key) {
            Some((at, last)) if now.saturating_duration_since(at) < HOLD_AGAIN => {
                (last * 2).min(HOLD_MAX)
            }
            _ => HOLD_FOR,
        };
        self.held.push(Hold {
            key,
            container,
            file,
            until: now + length,
            length,
        });
    }

    /// Take back the holds that are over, and those whose container
    /// `keep` no longer allows (gone, tainted, start events on).
    fn lift(
        &mut self,
        src: &dyn EventSource,
        ignores: &mut Ignores,
        now: Instant,
        keep: impl Fn(&str) -> bool,
    ) {
        if self.ended.len() >= MAX_COUNTED {
            self.ended.clear();
        }
        self.held.retain(|h| {
            let over = h.until <= now;
            if !over && keep(&h.container) {
                return true;
            }
            // Only a hold that ran its time makes the next one longer: one
            // lifted for a taint or start events starts over.
            if over {
                self.ended.insert(h.key, (now, h.length));
            }
            // A file written since has lost its mark already; nothing to
            // take back then.
            let _ = src.unignore_exec(h.file.as_fd());
            ignores.count = ignores.count.saturating_sub(1);
            false
        });
    }

    /// The kernel dropped every ignore mark (a flush): nothing is held.
    fn forget(&mut self) {
        self.held.clear();
        self.counts.clear();
        self.ended.clear();
    }

    /// When the first hold is over. A taint or a container's end is
    /// noticed on the loop's next wakeup, not polled for: each wakeup
    /// costs this VM tens of microseconds, and the follow thread's own
    /// scans find an archiver on a tainted pipe without its exec event.
    fn next_check(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.until).min()
    }
}

/// Turn one exec event into a pending probe, or drop it (overflow, an
/// interpreter or a plain program, an unreadable fd).
fn exec_event(
    src: &dyn EventSource,
    ctx: &Context,
    ignores: &mut Ignores,
    holds: &mut Holds,
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
    // A followed process that execs is named by its new program (not by
    // the loader, whose open is an exec event too); a new one that reads
    // a tainted pipe is followed from here.
    let at = crate::attribute::procfs::boot_ticks_now();
    if class != ExeClass::Interpreter {
        use std::os::fd::AsFd;
        // Busybox applets come in storms: a `readlink` each only while a
        // pipe is tainted; their probe names them otherwise.
        let remember = class != ExeClass::MultiCall || ctx.follow.any_taint();
        ctx.follow.exec_seen(ev.pid, at, remember, || {
            crate::watch::fanotify::fd_path(file.as_fd())
        });
    }
    decide::note_exec(ctx, ev.pid);
    let now = Instant::now();
    if class == ExeClass::MultiCall && !starts {
        holds.consider(src, ctx, ignores, fid, &file, now);
    }
    let later = || {
        ctx.stats.exec_plain.fetch_add(1, Ordering::Relaxed);
        let due = now + exe::PLAIN_DELAY;
        (due, due + exe::PLAIN_DELAY)
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
        at,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::policy::Policy;
    use crate::watch::fanotify::testing::Recording;

    fn ctx() -> Context {
        Context::with_defaults()
    }

    #[test]
    fn ignore_marks_start_over_after_any_flush_or_policy_change() {
        let c = ctx();
        let src = Recording::idle();
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
    fn a_file_is_held_from_its_threshold_per_container_and_lifted_when_over() {
        let c = ctx();
        let src = Recording::idle();
        let file = std::fs::File::open("/bin/true").unwrap();
        let fid = FileId { dev: 1, ino: 2 };
        let (a, b) = ((10, fid), (11, fid));
        let t0 = Instant::now();
        let mut holds = Holds::default();
        // The same inode reached through two containers' mounts is counted
        // apart: neither reaches the threshold on the other's execs.
        for _ in 1..HOLD_ENTER {
            assert!(!holds.note(a, t0));
            assert!(!holds.note(b, t0));
        }
        assert!(holds.note(a, t0), "the threshold exec");
        // Counts start over with each window.
        let mut late = Holds::default();
        for i in 0..(4 * HOLD_ENTER) {
            assert!(!late.note(a, t0 + STORM_WINDOW * i / (HOLD_ENTER / 2)));
        }
        let mut ign = Ignores::default();
        holds.hold(&src, &c, &mut ign, a, "ctr-a".into(), &file, t0);
        assert_eq!(src.ignored.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.exec_holds.load(Ordering::Relaxed), 1);
        assert_eq!(ign.count, 1, "a hold pins an inode like any ignore mark");
        // Held: no second hold of the same key.
        for _ in 0..HOLD_ENTER {
            assert!(!holds.note(a, t0));
        }
        assert_eq!(holds.next_check(), Some(t0 + HOLD_FOR));
        // Kept while its time runs and its container allows it...
        holds.lift(&src, &mut ign, t0 + HOLD_FOR / 2, |_| true);
        assert_eq!(
            (holds.held.len(), src.unignored.load(Ordering::Relaxed)),
            (1, 0)
        );
        // ...lifted at once when the container no longer does (a taint,
        // start events, the container gone)...
        holds.lift(&src, &mut ign, t0 + HOLD_FOR / 2, |id| id != "ctr-a");
        assert_eq!(
            (holds.held.len(), src.unignored.load(Ordering::Relaxed)),
            (0, 1)
        );
        assert_eq!(ign.count, 0);
        assert_eq!(holds.next_check(), None);
        // ...and when its time is over.
        holds.hold(&src, &c, &mut ign, a, "ctr-a".into(), &file, t0);
        holds.lift(&src, &mut ign, t0 + HOLD_FOR, |_| true);
        assert_eq!(src.unignored.load(Ordering::Relaxed), 2);
        // The same storm held again at once is held twice as long, up to
        // the longest hold; a later one starts over.
        let mut t = t0 + HOLD_FOR;
        let mut want = HOLD_FOR;
        for _ in 0..6 {
            t += HOLD_AGAIN / 2;
            holds.hold(&src, &c, &mut ign, a, "ctr-a".into(), &file, t);
            want = (want * 2).min(HOLD_MAX);
            assert_eq!(holds.next_check(), Some(t + want));
            t += want;
            holds.lift(&src, &mut ign, t, |_| true);
        }
        assert_eq!(want, HOLD_MAX);
        t += HOLD_AGAIN;
        holds.hold(&src, &c, &mut ign, a, "ctr-a".into(), &file, t);
        assert_eq!(holds.next_check(), Some(t + HOLD_FOR));
        holds.lift(&src, &mut ign, t, |_| false);
        assert_eq!(src.unignored.load(Ordering::Relaxed), 9);
        // After a flush the kernel has dropped the marks: forget, do not
        // take back.
        holds.hold(&src, &c, &mut ign, a, "ctr-a".into(), &file, t0);
        holds.forget();
        holds.lift(&src, &mut ign, t0 + HOLD_FOR, |_| true);
        assert_eq!(src.unignored.load(Ordering::Relaxed), 9);
        // No hold past the ignore-mark cap.
        let mut full = Ignores {
            count: MAX_IGNORES,
            ..Default::default()
        };
        holds.hold(&src, &c, &mut full, a, "ctr-a".into(), &file, t0);
        assert!(holds.held.is_empty());
    }

    #[test]
    fn only_a_container_whose_own_overlay_holds_the_file_may_hold_it() {
        // Nothing registered: no owner, whatever the file.
        let c = ctx();
        let file = std::fs::File::open("/bin/true").unwrap();
        let mut holds = Holds::default();
        let (mount, _) = fanotify::mount_of(file.as_fd()).unwrap();
        assert_eq!(holds.sole_owner(&c, mount, &file), None);
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
