//! The mark index the decision threads read: which container a process
//! belongs to, and which canonical container path a marked inode is.
//!
//! Inodes are keyed by (dev, ino), because the path read back from an
//! event's fd is the opener's own spelling (`/tmp/m/.aws/credentials`
//! through a bind mount, `/tmp/k` through a hard link). The index maps the
//! inode back to the path it has in the container, and alerts report both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

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

/// The index.
#[derive(Debug, Default)]
pub struct MarkIndex {
    /// Bumped on every change, so caches of "this process is benign" made
    /// under another set of containers are not trusted.
    generation: u64,
    files: HashMap<FileId, Vec<MarkedPath>>,
    by_pid_ns: HashMap<u64, Arc<ContainerView>>,
    by_mnt_ns: HashMap<u64, Arc<ContainerView>>,
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
        self.by_pid_ns.insert(view.pid_ns, view.clone());
        self.by_mnt_ns.insert(view.mnt_ns, view.clone());
        self.by_id.insert(id, view.clone());
        view
    }

    /// Remove a container; returns the inodes no other container marks.
    pub fn remove(&mut self, id: &str) -> Vec<FileId> {
        let Some(view) = self.by_id.remove(id) else {
            return Vec::new();
        };
        self.generation += 1;
        if self
            .by_pid_ns
            .get(&view.pid_ns)
            .is_some_and(|v| v.reference.id == id)
        {
            self.by_pid_ns.remove(&view.pid_ns);
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

    /// The container whose namespaces these are.
    pub fn container_of(&self, pid_ns: u64, mnt_ns: u64) -> Option<&Arc<ContainerView>> {
        self.by_pid_ns
            .get(&pid_ns)
            .or_else(|| self.by_mnt_ns.get(&mnt_ns))
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

    /// Number of containers.
    pub fn containers(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(idx.container_of(2, 0).unwrap().reference.id, "b");
        assert_eq!(idx.container_of(0, 1001).unwrap().reference.id, "a");
        assert_eq!(idx.remove("a"), vec![g]);
        assert_eq!(idx.marked_inodes(), 1);
        assert!(idx.container_of(1, 0).is_none());
        assert_eq!(idx.remove("b"), vec![f]);
        assert!(idx.remove("b").is_empty());
        assert_eq!(idx.containers(), 0);
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
