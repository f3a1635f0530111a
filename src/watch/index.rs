//! The mark index the decision threads read: which container a process
//! belongs to, and which canonical container path a marked inode is.
//!
//! Inodes are keyed by (dev, ino), because the path read back from an
//! event's fd is the opener's own spelling (`/tmp/m/.aws/credentials`
//! through a bind mount, `/tmp/k` through a hard link). The index maps the
//! inode back to the path it has in the container, and alerts report both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use crate::config::Action;
use crate::watch::resolve::FileId;

/// What the container is, as the registry knows it: the reference every
/// finding and alert carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub runtime: Option<String>,
    /// The Kubernetes pod the container belongs to, when the engine said.
    pub pod: Option<PodRef>,
}

/// A container's pod, from the annotations CRI engines set (ECS
/// `orchestrator.namespace` and `orchestrator.resource.name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// What the decision threads need to know about a registered container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub reference: ContainerRef,
    pub action: Action,
    pub init_pid: i32,
    pub init_start: u64,
    pub pid_ns: u64,
    pub mnt_ns: u64,
    pub net_ns: u64,
    /// The cgroup the runtime made for the container (`hierarchy:path`,
    /// see [`crate::registry::verify::container_cgroup`]), when it made
    /// one of its own.
    pub cgroup: Option<String>,
    /// The container's annotations, for exceptions.
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// One marked inode as a container sees it.
#[derive(Debug, Clone)]
pub struct MarkedPath {
    pub container: Arc<ContainerView>,
    /// The credential path this inode is judged as.
    pub path: PathBuf,
    pub is_dir: bool,
    /// For a derived credential (a file written by a process that read a
    /// credential): `copy of <origin>`. `None` for a credential found by
    /// the patterns, whose origin is `path`.
    pub derived: Option<String>,
}

impl MarkedPath {
    /// Where keyward found this credential, for alerts.
    pub fn origin(&self) -> String {
        self.derived
            .clone()
            .unwrap_or_else(|| self.path.to_string_lossy().into_owned())
    }
}

/// Take the index for writing without ever queueing inside the lock.
///
/// Why: std's `RwLock` on Linux lets a *waiting* writer block every new
/// reader. The permission loop (real-time) reads the index for every
/// event; a registration, prune or reaper (normal or low priority) that
/// waited in `write()` behind some reader would, once that reader left,
/// need the CPU to take and release the lock, and on a loaded host the
/// permission loop waited those hundreds of milliseconds behind it (seen:
/// 250-445 ms with fifty starts on two cores, past the decision
/// deadline). A writer here retries `try_write` instead, so readers only
/// ever wait for a writer that holds the lock, for the few microseconds
/// of a map update.
pub fn write(index: &RwLock<MarkIndex>) -> RwLockWriteGuard<'_, MarkIndex> {
    let mut spins = 0u32;
    loop {
        match index.try_write() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                spins += 1;
                if spins < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
    }
}

/// The index.
#[derive(Debug, Default)]
pub struct MarkIndex {
    /// Bumped on every change, so caches of "this process is benign" made
    /// under another set of containers are not trusted.
    generation: u64,
    files: HashMap<FileId, Vec<MarkedPath>>,
    /// Several containers may share a pid namespace (a pod's
    /// `shareProcessNamespace`, `--pid=container:`), so each namespace
    /// lists every container in it.
    by_pid_ns: HashMap<u64, Vec<Arc<ContainerView>>>,
    by_mnt_ns: HashMap<u64, Arc<ContainerView>>,
    /// Containers by their cgroup key; two containers the runtime put in
    /// one cgroup are both listed, and the cgroup then tells neither.
    by_cgroup: HashMap<String, Vec<Arc<ContainerView>>>,
    by_id: HashMap<String, Arc<ContainerView>>,
}

impl MarkIndex {
    /// Add (or replace) a container and its marked inodes.
    pub fn insert(
        &mut self,
        view: ContainerView,
        marks: &[(FileId, PathBuf, bool)],
    ) -> Arc<ContainerView> {
        let id = view.reference.id.clone();
        // A rescan replaces what the patterns find; the derived
        // credentials (copies the follower marked) are not found by any
        // pattern and are kept.
        let derived: Vec<(FileId, PathBuf, Option<String>)> = self
            .files
            .iter()
            .flat_map(|(fid, ms)| {
                ms.iter()
                    .filter(|m| m.derived.is_some() && m.container.reference.id == id)
                    .map(|m| (*fid, m.path.clone(), m.derived.clone()))
            })
            .collect();
        self.remove(&id);
        self.generation += 1;
        let view = Arc::new(view);
        for (fid, path, is_dir) in marks {
            self.files.entry(*fid).or_default().push(MarkedPath {
                container: view.clone(),
                path: path.clone(),
                is_dir: *is_dir,
                derived: None,
            });
        }
        for (fid, path, derived) in derived {
            let ms = self.files.entry(fid).or_default();
            if !ms.iter().any(|m| m.container.reference.id == id) {
                ms.push(MarkedPath {
                    container: view.clone(),
                    path,
                    is_dir: false,
                    derived,
                });
            }
        }
        self.by_pid_ns
            .entry(view.pid_ns)
            .or_default()
            .push(view.clone());
        if let Some(cg) = &view.cgroup {
            self.by_cgroup
                .entry(cg.clone())
                .or_default()
                .push(view.clone());
        }
        self.by_mnt_ns.insert(view.mnt_ns, view.clone());
        self.by_id.insert(id, view.clone());
        view
    }

    /// Add marked inodes to registered container `id` (what a create event
    /// made), keeping what it has; an inode it already has takes the new
    /// path (a removed file's inode number, made again). False when the
    /// container is not in the index.
    pub fn add(&mut self, id: &str, marks: &[(FileId, PathBuf, bool)]) -> bool {
        let Some(view) = self.by_id.get(id).cloned() else {
            return false;
        };
        self.generation += 1;
        for (fid, path, is_dir) in marks {
            // What this container knew of the inode before is older: a
            // file at a credential path now (a copy moved there, or a
            // removed copy's inode number made again).
            let ms = self.files.entry(*fid).or_default();
            ms.retain(|m| m.container.reference.id != id);
            ms.push(MarkedPath {
                container: view.clone(),
                path: path.clone(),
                is_dir: *is_dir,
                derived: None,
            });
        }
        true
    }

    /// Forget these inodes of container `id` (gone from its records, see
    /// `marks::prune`); derived credentials stay unless `derived`.
    pub fn forget_files(&mut self, id: &str, fids: &[FileId], derived: bool) {
        if fids.is_empty() {
            return;
        }
        self.generation += 1;
        for fid in fids {
            if let Some(ms) = self.files.get_mut(fid) {
                ms.retain(|m| m.container.reference.id != id || (m.derived.is_some() && !derived));
                if ms.is_empty() {
                    self.files.remove(fid);
                }
            }
        }
    }

    /// Remove a container; returns the inodes no other container marks.
    pub fn remove(&mut self, id: &str) -> Vec<FileId> {
        let Some(view) = self.by_id.remove(id) else {
            return Vec::new();
        };
        self.generation += 1;
        let drop_from = |list: &mut Vec<Arc<ContainerView>>| {
            list.retain(|v| v.reference.id != id);
            !list.is_empty()
        };
        if let Some(list) = self.by_pid_ns.get_mut(&view.pid_ns)
            && !drop_from(list)
        {
            self.by_pid_ns.remove(&view.pid_ns);
        }
        if let Some(cg) = &view.cgroup
            && let Some(list) = self.by_cgroup.get_mut(cg)
            && !drop_from(list)
        {
            self.by_cgroup.remove(cg);
        }
        if self
            .by_mnt_ns
            .get(&view.mnt_ns)
            .is_some_and(|v| v.reference.id == id)
        {
            self.by_mnt_ns.remove(&view.mnt_ns);
        }
        let mut orphaned = Vec::new();
        self.files.retain(|fid, marks| {
            marks.retain(|m| m.container.reference.id != id);
            if marks.is_empty() {
                orphaned.push(*fid);
                false
            } else {
                true
            }
        });
        orphaned
    }

    /// The inodes only container `id` marks (what removing it would
    /// orphan), without removing anything.
    pub fn held_alone(&self, id: &str) -> Vec<FileId> {
        self.files
            .iter()
            .filter(|(_, marks)| marks.iter().all(|m| m.container.reference.id == id))
            .map(|(fid, _)| *fid)
            .collect()
    }

    /// The container registered under the first of these cgroup keys that
    /// exactly one container has. The caller lists a process's cgroups
    /// and each one above them, deepest first
    /// ([`crate::attribute::procfs::CgroupLine::keys_up`]).
    pub fn by_cgroup<I: IntoIterator<Item = String>>(
        &self,
        keys: I,
    ) -> Option<&Arc<ContainerView>> {
        if self.by_cgroup.is_empty() {
            return None;
        }
        keys.into_iter()
            .find_map(|k| match self.by_cgroup.get(&k).map(Vec::as_slice) {
                Some([one]) => Some(one),
                _ => None,
            })
    }

    /// Whether any container is known by its cgroup (if none is, reading
    /// a process's cgroups is pointless).
    pub fn has_cgroups(&self) -> bool {
        !self.by_cgroup.is_empty()
    }

    /// The container whose mount namespace this is.
    pub fn by_mnt_ns(&self, mnt_ns: u64) -> Option<&Arc<ContainerView>> {
        self.by_mnt_ns.get(&mnt_ns)
    }

    /// The containers in this pid namespace (more than one when they
    /// share it).
    pub fn by_pid_ns(&self, pid_ns: u64) -> &[Arc<ContainerView>] {
        self.by_pid_ns
            .get(&pid_ns)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The container by its OCI id.
    pub fn container(&self, id: &str) -> Option<&Arc<ContainerView>> {
        self.by_id.get(id)
    }

    /// The marked path of an inode for a container, or for anyone.
    pub fn lookup(&self, fid: FileId, container: Option<&str>) -> Option<&MarkedPath> {
        let marks = self.files.get(&fid)?;
        match container {
            Some(id) => marks
                .iter()
                .find(|m| m.container.reference.id == id)
                .or_else(|| marks.first()),
            None => marks.first(),
        }
    }

    /// Record a derived credential of container `id`: the inode `fid`,
    /// written by a process that read the credential at `credential`.
    /// False when the container is gone or the inode is already indexed
    /// for it.
    pub fn add_derived(&mut self, id: &str, fid: FileId, credential: PathBuf) -> bool {
        let Some(view) = self.by_id.get(id).cloned() else {
            return false;
        };
        let marks = self.files.entry(fid).or_default();
        if marks.iter().any(|m| m.container.reference.id == id) {
            return false;
        }
        let derived = Some(format!("copy of {}", credential.display()));
        marks.push(MarkedPath {
            container: view,
            path: credential,
            is_dir: false,
            derived,
        });
        true
    }

    /// Changes whenever a container comes or goes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of marked inodes.
    pub fn marked_inodes(&self) -> usize {
        self.files.len()
    }

    /// Every registered container.
    pub fn views(&self) -> impl Iterator<Item = &Arc<ContainerView>> {
        self.by_id.values()
    }

    /// Number of containers.
    pub fn containers(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_writer_never_blocks_a_new_reader() {
        let index = RwLock::new(MarkIndex::default());
        let held = index.read().unwrap();
        std::thread::scope(|s| {
            let writer = s.spawn(|| write(&index).generation());
            std::thread::sleep(std::time::Duration::from_millis(30));
            // With `RwLock::write` the writer would be queued in the lock
            // now, and this read refused until it had been and gone.
            assert!(index.try_read().is_ok(), "a reader waits behind a writer");
            drop(held);
            writer.join().unwrap();
        });
    }

    fn view(id: &str, ns: u64) -> ContainerView {
        ContainerView {
            reference: ContainerRef {
                id: id.into(),
                ..Default::default()
            },
            action: Action::Alert,
            init_pid: 100,
            init_start: 1,
            pid_ns: ns,
            mnt_ns: ns + 1000,
            net_ns: 0,
            cgroup: None,
            annotations: Default::default(),
        }
    }

    #[test]
    fn shared_inodes_survive_until_the_last_container_goes() {
        let mut idx = MarkIndex::default();
        let f = FileId { dev: 1, ino: 2 };
        let g = FileId { dev: 1, ino: 3 };
        idx.insert(
            view("a", 1),
            &[
                (f, "/etc/shadow".into(), false),
                (g, "/root/.ssh".into(), true),
            ],
        );
        idx.insert(view("b", 2), &[(f, "/etc/shadow".into(), false)]);
        assert_eq!(
            idx.lookup(f, Some("b")).unwrap().container.reference.id,
            "b"
        );
        assert_eq!(idx.by_pid_ns(2)[0].reference.id, "b");
        assert_eq!(idx.by_mnt_ns(1001).unwrap().reference.id, "a");
        assert_eq!(idx.remove("a"), vec![g]);
        assert_eq!(idx.marked_inodes(), 1);
        assert!(idx.by_pid_ns(1).is_empty());
        assert_eq!(idx.remove("b"), vec![f]);
        assert!(idx.remove("b").is_empty());
        assert_eq!(idx.containers(), 0);
    }

    #[test]
    fn a_shared_pid_namespace_lists_both_and_cgroups_tell_them_apart() {
        let mut idx = MarkIndex::default();
        let mut a = view("a", 7);
        a.cgroup = Some("0::/pod/a".into());
        let mut b = view("b", 7);
        b.mnt_ns = 2000;
        b.cgroup = Some("0::/pod/b".into());
        idx.insert(a, &[]);
        idx.insert(b, &[]);
        let ids =
            |v: &[Arc<ContainerView>]| v.iter().map(|v| v.reference.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(idx.by_pid_ns(7)),
            ["a", "b"],
            "the second does not replace the first"
        );
        // A process's cgroups, deepest first, as `CgroupLine::keys_up`
        // lists them.
        let keys = |p: &[&str]| p.iter().map(|k| format!("0::{k}")).collect::<Vec<_>>();
        let line = keys(&["/pod/a/inner/deeper", "/pod/a/inner", "/pod/a", "/pod"]);
        assert_eq!(idx.by_cgroup(line.clone()).unwrap().reference.id, "a");
        let pod = keys(&["/pod"]);
        assert!(
            idx.by_cgroup(pod).is_none(),
            "the pod's own cgroup is neither"
        );
        idx.remove("a");
        assert_eq!(ids(idx.by_pid_ns(7)), ["b"]);
        assert!(idx.by_cgroup(line).is_none());
        // Two containers in one cgroup: the cgroup tells neither.
        let mut c = view("c", 8);
        c.cgroup = Some("0::/pod/b".into());
        idx.insert(c, &[]);
        assert!(idx.by_cgroup(keys(&["/pod/b"])).is_none());
    }

    #[test]
    fn a_rescan_keeps_the_derived_credentials() {
        let mut idx = MarkIndex::default();
        let key = FileId { dev: 1, ino: 2 };
        let copy = FileId { dev: 1, ino: 9 };
        idx.insert(view("a", 1), &[(key, "/root/.ssh/id_rsa".into(), false)]);
        assert!(idx.add_derived("a", copy, "/root/.ssh/id_rsa".into()));
        // The rescan re-inserts what the patterns find; the copy is not
        // among them.
        idx.insert(view("a", 1), &[(key, "/root/.ssh/id_rsa".into(), false)]);
        let m = idx
            .lookup(copy, Some("a"))
            .expect("the copy is still known");
        assert_eq!(m.origin(), "copy of /root/.ssh/id_rsa");
        assert_eq!(m.path, std::path::Path::new("/root/.ssh/id_rsa"));
        // It goes with its container.
        idx.remove("a");
        assert!(idx.lookup(copy, None).is_none());
    }
}
