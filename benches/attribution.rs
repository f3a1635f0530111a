//! procfs attribution cost on a live process: what the permission loop pays
//! per event before any rule runs.
//!
//! * [`keyward::attribute::procfs::stat`]: one read of `/proc/<pid>/stat` (also
//!   what `container_of` pays per ancestry step, next to two `ns` stats);
//! * [`keyward::attribute::procfs::RawProcess::read`]: stat, exe, cmdline and
//!   comm, i.e. what `decide_open` reads for every held opener in a
//!   container;
//! * [`keyward::attribute::procfs::RawProcess::complete`]: the extra reads made
//!   only for a finding (parent, cwd, uid via the `procfs` crate).
//! * `ns_inode_pid_mnt`: the two namespace stats the earlier
//!   `container_of` made per ancestry step (plus a `stat`);
//! * `cgroups`, `pid_ns_chain`: what `container_of` reads now (one read of
//!   `/proc/<pid>/cgroup`; the namespace chain by `NS_GET_PARENT`);
//! * `container_of_outsider`: the whole lookup for a process in no watched
//!   container, with one container registered by cgroup (every step
//!   misses, the most it costs);
//! * `container_of_member`: the lookup for a process in its container's
//!   mount namespace (the bench's target registered as that container):
//!   one stat.
//!
//! The target is a spawned `sleep 600` (killed by pid at the end), so the
//! figures are for an ordinary small process, not for the bench itself.
//!
//! Run: `cargo bench --bench attribution` (any user; reading another
//! process's `exe` needs the same uid or root).

use std::hint::black_box;
use std::process::{Child, Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use keyward::attribute::procfs::{self, RawProcess};

/// A `sleep` child, killed and reaped on drop.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A registered container with this mount namespace, known by a cgroup
/// no process here is in.
fn view(mnt_ns: u64) -> keyward::watch::index::ContainerView {
    keyward::watch::index::ContainerView {
        reference: Default::default(),
        action: keyward::config::Action::Alert,
        init_pid: 0,
        init_start: 0,
        pid_ns: 1,
        mnt_ns,
        net_ns: 3,
        cgroup: Some("0::/not-this-one".into()),
        annotations: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let sleeper = Sleeper(child);
    let pid = sleeper.0.id() as i32;
    // Wait until the child has exec'ed sleep (argv no longer ours).
    for _ in 0..1000 {
        if RawProcess::read(pid).is_ok_and(|p| p.exe_name() == "sleep") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let p = RawProcess::read(pid).expect("read sleep");
    assert_eq!(p.exe_name(), "sleep");

    let mut g = c.benchmark_group("attribution");
    g.bench_function("stat", |b| {
        b.iter(|| black_box(procfs::stat(black_box(pid))))
    });
    g.bench_function("ns_inode_pid_mnt", |b| {
        b.iter(|| {
            black_box(procfs::ns_inode(black_box(pid), "pid").ok());
            black_box(procfs::ns_inode(black_box(pid), "mnt").ok());
        })
    });
    g.bench_function("cgroups", |b| {
        b.iter(|| black_box(procfs::cgroups(black_box(pid))))
    });
    g.bench_function("pid_ns_chain", |b| {
        b.iter(|| black_box(procfs::pid_ns_chain(black_box(pid))))
    });
    let index = std::sync::RwLock::new(keyward::watch::index::MarkIndex::default());
    index.write().unwrap().insert(view(2), &[]);
    g.bench_function("container_of_outsider", |b| {
        b.iter(|| {
            black_box(keyward::attribute::container::container_of(
                &index,
                black_box(pid),
            ))
        })
    });
    let member = std::sync::RwLock::new(keyward::watch::index::MarkIndex::default());
    member
        .write()
        .unwrap()
        .insert(view(procfs::ns_inode(pid, "mnt").unwrap()), &[]);
    g.bench_function("container_of_member", |b| {
        b.iter(|| {
            black_box(keyward::attribute::container::container_of(
                &member,
                black_box(pid),
            ))
        })
    });
    g.bench_function("raw_process_read", |b| {
        b.iter(|| black_box(RawProcess::read(black_box(pid))))
    });
    g.bench_function("complete", |b| {
        b.iter_batched(
            || p.clone(),
            |raw| black_box(raw.complete()),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("read_and_complete", |b| {
        b.iter(|| black_box(RawProcess::read(black_box(pid)).map(RawProcess::complete)))
    });
    g.finish();
    drop(sleeper);
}

criterion_group!(benches, bench);
criterion_main!(benches);
