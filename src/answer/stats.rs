//! Counters the decision threads bump, and the decision-latency
//! histogram; `keyward status` reads a [`StatsSnapshot`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::Degradation;

/// How a decision thread got scheduled (`keyward status`:
/// `answer_scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduling {
    /// Not set yet, or the kernel refused every raise.
    #[default]
    Unchanged,
    /// nice -10.
    Nice,
    /// `SCHED_RR`, priority [`super::events::ANSWER_RT_PRIORITY`].
    Realtime,
}

/// Counters the decision threads bump; read by `keyward status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub perm_events: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub own_pid: AtomicU64,
    pub host_process: AtomicU64,
    /// Permission events answered from the benign-process cache.
    pub cache_hits: AtomicU64,
    pub exec_events: AtomicU64,
    /// Exec events read once, after `exe::PLAIN_DELAY` (launchers, and
    /// plain programs that could not be ignored).
    pub exec_plain: AtomicU64,
    /// Probes of pending execs (reads of their `/proc/<pid>/stat`).
    pub exec_probes: AtomicU64,
    /// Settled busybox applets let go by their plain `comm`.
    pub exec_applets_skipped: AtomicU64,
    /// Exec storms (see `answer::Storm`) and the multi-call execs read in
    /// one, a tick at a time.
    pub exec_storms: AtomicU64,
    pub exec_batched: AtomicU64,
    /// Multi-call files of one container held (their execs ignored for a
    /// while) during a storm in that container; see `answer::exec`.
    pub exec_holds: AtomicU64,
    /// Ignore marks placed in the exec group (ELF interpreters and plain
    /// programs, whose execs the kernel then stops reporting).
    pub exec_ignored: AtomicU64,
    pub exec_unsettled: AtomicU64,
    /// Execs still not complete after [`EXEC_SETTLE`] (the rest of
    /// `exec_unsettled` exited before they could be read).
    pub exec_timeouts: AtomicU64,
    pub findings: AtomicU64,
    pub queue_drops: AtomicU64,
    pub attribution_errors: AtomicU64,
    pub respond_errors: AtomicU64,
    pub parse_errors: AtomicU64,
    pub overflows: AtomicU64,
    pub panics: AtomicU64,
    pub deadline_releases: AtomicU64,
    /// Rescue readers started because the permission loop was stuck on an
    /// event of the daemon's own (see `answer::permission`).
    pub rescues: AtomicU64,
    /// Rescans of containers for credential paths created after start.
    pub rescans: AtomicU64,
    /// `io.keyward.response` annotations refused for lowering the host's
    /// action.
    pub annotations_refused: AtomicU64,
    /// Marks placed at once on a create event (before the debounced
    /// rescan), and the time each took from reading the event batch to
    /// the marks being in: total and worst, in microseconds.
    pub create_marks: AtomicU64,
    pub create_mark_us_total: AtomicU64,
    pub create_mark_us_max: AtomicU64,
    /// Processes followed since they read a credential, containers whose
    /// writes are watched for that, close-after-write events read, derived
    /// credentials marked, and those refused at the per-container bound.
    pub followed: AtomicU64,
    pub write_armed: AtomicU64,
    /// Write marks removed once a container had no reader and no tainted
    /// pipe left, and removals the kernel refused.
    pub write_disarmed: AtomicU64,
    pub write_disarm_failed: AtomicU64,
    pub write_events: AtomicU64,
    pub derived: AtomicU64,
    pub derived_dropped: AtomicU64,
    /// Pipes tainted by a reader (and those refused at the per-container
    /// bound), processes followed because they read one, holder scans
    /// made, and scans the permission thread left to the follow thread.
    pub pipes_tainted: AtomicU64,
    pub pipes_dropped: AtomicU64,
    pub pipe_readers: AtomicU64,
    pub pipe_scans: AtomicU64,
    pub pipe_scans_deferred: AtomicU64,
    /// Looks at a reader's pipeline siblings in place of a deferred scan.
    pub pipe_sibling_scans: AtomicU64,
    /// Pipe readers that exec'd while judged: left to their exec's probe.
    pub pipe_judged_stale: AtomicU64,
    /// Per-container bounds reached (`[limits]`), with the containers.
    pub bounds: BoundHits,
    /// Create events marked at once for the entry they made, and those
    /// that could not be (no handle known for their directory, so a full
    /// rescan of the container was asked instead).
    pub creates_incremental: AtomicU64,
    pub creates_unresolved: AtomicU64,
    /// Passes that forgot what a container removed (`marks::prune`).
    pub prunes: AtomicU64,
    /// Credential opens that only write, whose opener is not followed.
    pub write_only_opens: AtomicU64,
    /// How the permission loop is scheduled (see
    /// [`super::events::answer_priority`]).
    pub answer_scheduling: Mutex<Scheduling>,
    /// Decision latency histogram: bucket i counts decisions that took
    /// less than 2^i microseconds (the last bucket takes the rest).
    pub latency_us: [AtomicU64; LATENCY_BUCKETS],
    /// The decisions' latencies added up, for the histogram's sum.
    pub latency_us_total: AtomicU64,
}

/// Buckets of the latency histogram (up to ~2^23 us = 8 s).
pub const LATENCY_BUCKETS: usize = 24;

/// Decision latency percentiles, from the histogram (upper bucket bounds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_bucket_us: u64,
    /// (upper bound in us, count) for every non-empty bucket.
    pub buckets: Vec<(u64, u64)>,
    /// Every decision's latency added up, in microseconds.
    #[serde(default)]
    pub sum_us: u64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub perm_events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub own_pid: u64,
    pub host_process: u64,
    pub cache_hits: u64,
    pub exec_events: u64,
    pub exec_plain: u64,
    pub exec_probes: u64,
    pub exec_ignored: u64,
    pub exec_applets_skipped: u64,
    pub exec_storms: u64,
    pub exec_batched: u64,
    pub exec_holds: u64,
    pub exec_unsettled: u64,
    pub exec_timeouts: u64,
    pub findings: u64,
    pub queue_drops: u64,
    pub attribution_errors: u64,
    pub respond_errors: u64,
    pub parse_errors: u64,
    pub overflows: u64,
    pub panics: u64,
    pub deadline_releases: u64,
    #[serde(default)]
    pub rescues: u64,
    pub rescans: u64,
    #[serde(default)]
    pub annotations_refused: u64,
    #[serde(default)]
    pub create_marks: u64,
    #[serde(default)]
    pub create_mark_us_total: u64,
    #[serde(default)]
    pub create_mark_us_max: u64,
    pub followed: u64,
    pub write_armed: u64,
    #[serde(default)]
    pub write_disarmed: u64,
    #[serde(default)]
    pub write_disarm_failed: u64,
    pub write_events: u64,
    pub derived: u64,
    pub derived_dropped: u64,
    #[serde(default)]
    pub pipes_tainted: u64,
    #[serde(default)]
    pub pipes_dropped: u64,
    #[serde(default)]
    pub pipe_readers: u64,
    #[serde(default)]
    pub pipe_scans: u64,
    #[serde(default)]
    pub pipe_scans_deferred: u64,
    #[serde(default)]
    pub pipe_judged_stale: u64,
    #[serde(default)]
    pub pipe_sibling_scans: u64,
    /// Bounds reached, by bound (see `[limits]`).
    #[serde(default)]
    pub bounds: BTreeMap<String, u64>,
    #[serde(default)]
    pub creates_incremental: u64,
    #[serde(default)]
    pub creates_unresolved: u64,
    #[serde(default)]
    pub prunes: u64,
    #[serde(default)]
    pub write_only_opens: u64,
    #[serde(default)]
    pub answer_scheduling: Scheduling,
    /// Decisions that stopped waiting for their container's image to be
    /// learned (`attribute::identity::LEARN_WAIT`); filled in by the
    /// status report from the identities.
    #[serde(default)]
    pub learn_timeouts: u64,
    pub latency: LatencySnapshot,
}

impl Stats {
    /// The counters whose growth means degraded coverage.
    pub fn degradation(&self) -> Degradation {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Degradation {
            deadline_releases: g(&self.deadline_releases),
            overflows: g(&self.overflows),
            queue_drops: g(&self.queue_drops),
            parse_errors: g(&self.parse_errors),
            panics: g(&self.panics),
            bounds: self.bounds.total(),
            // Kept by the identities; the context adds it.
            learn_timeouts: 0,
        }
    }

    /// Count one decision's latency.
    pub fn record_latency(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.latency_us[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.latency_us_total.fetch_add(us, Ordering::Relaxed);
    }

    fn latency(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .latency_us
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let upper = |i: usize| 1u64 << i;
        let pct = |p: u64| {
            let want = (count * p).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return upper(i);
                }
            }
            0
        };
        LatencySnapshot {
            count,
            p50_us: if count == 0 { 0 } else { pct(50) },
            p99_us: if count == 0 { 0 } else { pct(99) },
            max_bucket_us: counts.iter().rposition(|&c| c > 0).map(upper).unwrap_or(0),
            buckets: counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| (upper(i), c))
                .collect(),
            sum_us: self.latency_us_total.load(Ordering::Relaxed),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            perm_events: g(&self.perm_events),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            own_pid: g(&self.own_pid),
            host_process: g(&self.host_process),
            cache_hits: g(&self.cache_hits),
            exec_events: g(&self.exec_events),
            exec_plain: g(&self.exec_plain),
            exec_probes: g(&self.exec_probes),
            exec_ignored: g(&self.exec_ignored),
            exec_applets_skipped: g(&self.exec_applets_skipped),
            exec_storms: g(&self.exec_storms),
            exec_batched: g(&self.exec_batched),
            exec_holds: g(&self.exec_holds),
            exec_unsettled: g(&self.exec_unsettled),
            exec_timeouts: g(&self.exec_timeouts),
            findings: g(&self.findings),
            queue_drops: g(&self.queue_drops),
            attribution_errors: g(&self.attribution_errors),
            respond_errors: g(&self.respond_errors),
            parse_errors: g(&self.parse_errors),
            overflows: g(&self.overflows),
            panics: g(&self.panics),
            deadline_releases: g(&self.deadline_releases),
            rescues: g(&self.rescues),
            rescans: g(&self.rescans),
            annotations_refused: g(&self.annotations_refused),
            create_marks: g(&self.create_marks),
            create_mark_us_total: g(&self.create_mark_us_total),
            create_mark_us_max: g(&self.create_mark_us_max),
            followed: g(&self.followed),
            write_armed: g(&self.write_armed),
            write_disarmed: g(&self.write_disarmed),
            write_disarm_failed: g(&self.write_disarm_failed),
            write_events: g(&self.write_events),
            derived: g(&self.derived),
            derived_dropped: g(&self.derived_dropped),
            pipes_tainted: g(&self.pipes_tainted),
            pipes_dropped: g(&self.pipes_dropped),
            pipe_readers: g(&self.pipe_readers),
            pipe_scans: g(&self.pipe_scans),
            pipe_scans_deferred: g(&self.pipe_scans_deferred),
            pipe_judged_stale: g(&self.pipe_judged_stale),
            pipe_sibling_scans: g(&self.pipe_sibling_scans),
            bounds: self.bounds.counts(),
            creates_incremental: g(&self.creates_incremental),
            creates_unresolved: g(&self.creates_unresolved),
            prunes: g(&self.prunes),
            write_only_opens: g(&self.write_only_opens),
            answer_scheduling: *self
                .answer_scheduling
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            learn_timeouts: 0,
            latency: self.latency(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_percentiles() {
        let s = Stats::default();
        for _ in 0..98 {
            s.record_latency(Duration::from_micros(10));
        }
        s.record_latency(Duration::from_micros(100));
        s.record_latency(Duration::from_millis(5));
        let l = s.snapshot().latency;
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_us, 16);
        assert_eq!(l.p99_us, 128);
        assert_eq!(l.max_bucket_us, 8192);
    }
}

/// A per-container bound of the daemon's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// `limits.marks_per_container`: credential paths left unmarked.
    Marks,
    /// `limits.derived_per_container`: copies a reader wrote left unmarked.
    Derived,
    /// Tainted pipes per container (`follow::MAX_TAINTED`): further pipes
    /// not followed.
    Pipes,
    /// `limits.creates_per_second`: creates left to a full rescan.
    Creates,
    /// An expansion cut short (a directory of more entries, or a pattern
    /// matching more paths, than the resolver reads).
    Expansion,
}

impl Bound {
    const ALL: [Bound; 5] = [
        Bound::Marks,
        Bound::Derived,
        Bound::Pipes,
        Bound::Creates,
        Bound::Expansion,
    ];

    /// The setting (or fixed bound) by name, as status and alerts say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Marks => "marks_per_container",
            Bound::Derived => "derived_per_container",
            Bound::Pipes => "tainted_pipes_per_container",
            Bound::Creates => "creates_per_second",
            Bound::Expansion => "expansion",
        }
    }

    /// What reaching it costs, for the health alert.
    pub fn effect(self) -> &'static str {
        match self {
            Bound::Marks => {
                "further credential paths of this container are left unmarked: an open of one is judged only through its directory's mark and the exec rule"
            }
            Bound::Derived => {
                "further copies of credentials written in this container are not marked as derived credentials"
            }
            Bound::Pipes => {
                "further pipes a credential goes into in this container are not followed"
            }
            Bound::Creates => {
                "this container's new credential paths are marked by a full rescan (at most one per limits.rescan_interval_ms) instead of at once"
            }
            Bound::Expansion => {
                "a directory or pattern matched more entries than are read: paths past the bound are not marked"
            }
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Most containers remembered per bound between two health reports.
const BOUND_CONTAINERS: usize = 64;

/// Counts of bounds reached, and which containers reached them since the
/// last health report.
#[derive(Debug, Default)]
pub struct BoundHits {
    counts: [AtomicU64; 5],
    recent: Mutex<BTreeMap<(Bound, String), u64>>,
}

impl BoundHits {
    /// Container `id` reached bound `b` (once more).
    pub fn hit(&self, b: Bound, id: &str) {
        self.counts[b.slot()].fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let key = (b, id.to_string());
        if let Some(n) = recent.get_mut(&key) {
            *n += 1;
        } else if recent.keys().filter(|(k, _)| *k == b).count() < BOUND_CONTAINERS {
            recent.insert(key, 1);
        }
    }

    /// The (bound, container, times) reached since the last call.
    pub fn take_recent(&self) -> Vec<(Bound, String, u64)> {
        std::mem::take(&mut *self.recent.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|((b, id), n)| (b, id, n))
            .collect()
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        Bound::ALL
            .iter()
            .map(|b| {
                (
                    b.as_str().to_string(),
                    self.counts[b.slot()].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// At most `N` uses a second per key (a container id): a budget that
/// keeps one container's work from filling a thread every container
/// shares.
#[derive(Debug, Default)]
pub struct PerSecond<const N: u32> {
    uses: Mutex<HashMap<String, (Instant, u32)>>,
}

impl<const N: u32> PerSecond<N> {
    /// Whether `key` may have one more use now (and take it).
    pub fn allow(&self, key: &str) -> bool {
        self.allow_up_to(key, N)
    }

    /// [`PerSecond::allow`] with the budget `n` given at the call (a
    /// setting that a reload may change).
    pub fn allow_up_to(&self, key: &str, n: u32) -> bool {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let e = uses.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        if e.1 >= n {
            return false;
        }
        e.1 += 1;
        true
    }

    /// Forget `key` (its container went).
    pub fn forget(&self, key: &str) {
        self.uses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::PerSecond;

    #[test]
    fn a_budget_allows_n_a_second_per_key() {
        let b = PerSecond::<2>::default();
        assert!(b.allow("a") && b.allow("a"));
        assert!(!b.allow("a"), "the third use in the second is refused");
        assert!(b.allow("b"), "keys are apart");
        b.forget("a");
        assert!(b.allow("a"), "a forgotten key starts over");
    }
}
