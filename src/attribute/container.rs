//! Which watched container a process belongs to.
//!
//! By the process's pid or mount namespace, or an ancestor's: a process
//! that unshared its own namespaces inside the container still descends
//! from it.

use std::sync::{Arc, RwLock};

use super::procfs;
use crate::watch::index::{ContainerView, MarkIndex};

/// How far up the parent chain we look for a container member, for
/// processes that made their own pid namespace inside the container.
const MAX_ANCESTRY: usize = 16;

/// The container `pid` belongs to, if any.
pub fn container_of(index: &RwLock<MarkIndex>, pid: i32) -> Option<Arc<ContainerView>> {
    let idx = index.read().unwrap_or_else(|e| e.into_inner());
    let mut cur = pid;
    for _ in 0..MAX_ANCESTRY {
        let pid_ns = procfs::ns_inode(cur, "pid").ok()?;
        if let Some(v) = idx.container_of(pid_ns, 0) {
            return Some(v.clone());
        }
        let mnt_ns = procfs::ns_inode(cur, "mnt").unwrap_or(0);
        if let Some(v) = idx.container_of(0, mnt_ns) {
            return Some(v.clone());
        }
        cur = procfs::stat(cur).ok()?.ppid;
        if cur <= 1 {
            return None;
        }
    }
    None
}
