//! Which watched container a process belongs to.
//!
//! By what the kernel records, in this order:
//!
//! 0. **the mount namespace, alone**, when the container it belongs to
//!    shares its pid namespace with no other: one stat, for the common
//!    case (entering that mount namespace takes a view of the container's
//!    processes, which only its own pid namespace and the host have);
//! 1. **the cgroup** the runtime made for the container: a process cannot
//!    leave it by making namespaces or parents, and a cgroup it makes
//!    below is still found (the deepest registered cgroup wins);
//! 2. **the mount namespace**, which containers that share a pid
//!    namespace do not share;
//! 3. **the pid namespace, or any above it**: a process that made its own
//!    pid namespace inside the container is in a child of the
//!    container's, and the kernel bounds that nesting at 32 levels, so no
//!    number of parents or namespaces hides it. The host's own pid
//!    namespace never counts: a container run with `--pid=host` is found
//!    by its cgroup or mount namespace, and host processes are not
//!    blamed on it.
//!
//! When a pid namespace is shared and neither the cgroup nor the mount
//! namespace tells the containers apart, the parent chain is asked for a
//! mount namespace (bounded), and failing that the strictest of their
//! policies applies.

use std::sync::{Arc, RwLock};

use super::procfs;
use crate::watch::index::{ContainerView, MarkIndex};

/// How far up the parent chain a shared pid namespace is disambiguated.
const MAX_ANCESTRY: usize = 16;

/// The container `pid` belongs to, if any.
pub fn container_of(index: &RwLock<MarkIndex>, pid: i32) -> Option<Arc<ContainerView>> {
    let idx = index.read().unwrap_or_else(|e| e.into_inner());
    let mnt_ns = procfs::ns_inode(pid, "mnt").ok()?;
    let by_mnt = idx.by_mnt_ns(mnt_ns);
    // The common case, in one stat: a process in its container's mount
    // namespace, where no other container shares the pid namespace. Only
    // a process that can see the container's own (its pid namespace, or
    // the host's) can enter that mount namespace, so nothing else is in
    // it but the host's root.
    if let Some(v) = by_mnt.filter(|v| idx.by_pid_ns(v.pid_ns).len() <= 1) {
        return Some(v.clone());
    }
    if idx.has_cgroups()
        && let Ok(lines) = procfs::cgroups(pid)
        && let Some(v) = idx.by_cgroup(lines.iter().flat_map(|l| l.keys_up()))
    {
        return Some(v.clone());
    }
    if let Some(v) = by_mnt {
        return Some(v.clone());
    }
    // The daemon's own pid namespace (the host's, for a daemon on the host).
    let own = procfs::fixed_ns(false, "pid").unwrap_or(0);
    for ns in procfs::pid_ns_chain(pid) {
        if ns == own {
            break;
        }
        match idx.by_pid_ns(ns) {
            [] => continue,
            [one] => return Some(one.clone()),
            shared => return one_of(&idx, shared, pid),
        }
    }
    None
}

/// Which of the containers sharing a pid namespace `pid` is in, when its
/// cgroup and mount namespace did not say: an ancestor's mount namespace,
/// else the container with the strictest action.
fn one_of(idx: &MarkIndex, shared: &[Arc<ContainerView>], pid: i32) -> Option<Arc<ContainerView>> {
    let mut cur = pid;
    for _ in 0..MAX_ANCESTRY {
        let Ok(stat) = procfs::stat(cur) else { break };
        cur = stat.ppid;
        if cur <= 1 {
            break;
        }
        if let Some(v) = procfs::ns_inode(cur, "mnt")
            .ok()
            .and_then(|m| idx.by_mnt_ns(m))
            .filter(|v| shared.iter().any(|s| s.reference.id == v.reference.id))
        {
            return Some(v.clone());
        }
    }
    shared.iter().max_by_key(|v| v.action.strength()).cloned()
}
