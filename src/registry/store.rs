//! The registry of watched containers, verified at registration and
//! persisted under the runtime directory so a restart or a crash loses no
//! container.
//!
//! A registration names a pid; the daemon checks that the pid exists, is not
//! pid 1 or the daemon itself, and does not run in the host's mount
//! namespace, then records its start time and namespace inodes. On restart
//! each record is re-validated against those, so a reused pid is never taken
//! for the container it replaced.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attribute::procfs;
use crate::config::Action;
use crate::watch::index::{ContainerRef, ContainerView};
use crate::watch::marks::Placed;

/// Largest registry file we read back.
const MAX_REGISTRY_BYTES: u64 = 64 * 1024 * 1024;

/// Errors persisting registrations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot write registry {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read registry {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Read one JSON file of at most [`MAX_REGISTRY_BYTES`].
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RegistryError> {
    let load = |source| RegistryError::Load {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(load)?;
    if meta.len() > MAX_REGISTRY_BYTES {
        return Err(load(std::io::Error::other("file too large")));
    }
    let bytes = fs::read(path).map_err(load)?;
    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// A registered container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pid: i32,
    pub start_time_ticks: u64,
    pub pid_ns: u64,
    pub mnt_ns: u64,
    pub net_ns: u64,
    /// The container's own cgroup (`hierarchy:path`), absent when the
    /// runtime made none (and in records of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub bundle: PathBuf,
    /// Absolute rootfs path, as the runtime's mount namespace names it.
    pub rootfs: PathBuf,
    pub annotations: BTreeMap<String, String>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub action: Action,
    pub registered_at: String,
    /// The marks in place, persisted so they can be found again for
    /// removal (same keys as before: `marks`, `exec_scope`,
    /// `create_marks`).
    #[serde(flatten)]
    pub placed: Placed,
}

impl ContainerRecord {
    /// The view the decision threads use.
    pub fn view(&self) -> ContainerView {
        ContainerView {
            reference: ContainerRef {
                id: self.id.clone(),
                name: self.name.clone(),
                image: self.image.clone(),
                runtime: self.annotations.get("io.container.manager").cloned(),
                pod: super::verify::pod_of(&self.annotations),
            },
            action: self.action,
            init_pid: self.pid,
            init_start: self.start_time_ticks,
            pid_ns: self.pid_ns,
            mnt_ns: self.mnt_ns,
            net_ns: self.net_ns,
            cgroup: self.cgroup.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Whether the container's init is still the process we registered.
    pub fn alive(&self) -> bool {
        procfs::stat(self.pid).is_ok_and(|s| s.start_time_ticks == self.start_time_ticks)
    }
}

/// Record files to write (or, with no bytes, to remove), taken from the
/// registry by [`Registry::take_writes`].
#[derive(Debug)]
#[must_use]
pub struct Writes {
    dir: PathBuf,
    files: Vec<(PathBuf, Option<std::io::Result<Vec<u8>>>)>,
    legacy: Option<PathBuf>,
}

impl Writes {
    /// Write them: temp file + rename, mode 0600; remove the files of
    /// removed records.
    pub fn apply(self) -> Result<(), RegistryError> {
        let err = |path: &Path, source| RegistryError::Save {
            path: path.to_path_buf(),
            source,
        };
        if self.files.is_empty() && self.legacy.is_none() {
            return Ok(());
        }
        // The directory is made when a write finds it missing, not tried
        // at every save (two failed mkdirs per registration).
        let create = |tmp: &Path| {
            let open = || {
                fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(tmp)
            };
            match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(&self.dir).map_err(|e| err(&self.dir, e))?;
                    open().map_err(|e| err(tmp, e))
                }
                r => r.map_err(|e| err(tmp, e)),
            }
        };
        // No fsync: the files only have to survive the daemon (a crash or
        // SIGKILL leaves the page cache intact, and the rename is atomic).
        // After a power loss or kernel crash every container they name is
        // gone anyway. An fsync cost each start and stop milliseconds.
        for (path, bytes) in self.files {
            let Some(bytes) = bytes else {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err(&path, e));
                    }
                    _ => continue,
                }
            };
            let bytes = bytes.map_err(|e| err(&path, e))?;
            let tmp = path.with_extension("json.tmp");
            let mut f = create(&tmp)?;
            f.write_all(&bytes).map_err(|e| err(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        }
        if let Some(legacy) = self.legacy {
            let _ = fs::remove_file(legacy);
        }
        Ok(())
    }
}

/// The persisted set of containers: one JSON file per container under
/// `runtime_dir/containers/`, so a registration writes one small file
/// instead of rewriting every record (500 containers made that half a
/// megabyte per start), and never renames over an existing file (ext4
/// flushes data to disk on such a rename, in the hook's critical path).
#[derive(Debug, Default)]
pub struct Registry {
    dir: PathBuf,
    /// `registry.json` of earlier versions, read once and removed at the
    /// first save.
    legacy: Option<PathBuf>,
    containers: BTreeMap<String, ContainerRecord>,
    /// Ids written or removed since the last save.
    dirty: std::collections::BTreeSet<String>,
}

impl Registry {
    /// An empty registry persisted under `runtime_dir/containers/`.
    pub fn new(runtime_dir: &Path) -> Self {
        Self {
            dir: runtime_dir.join("containers"),
            legacy: None,
            containers: BTreeMap::new(),
            dirty: Default::default(),
        }
    }

    /// The file of container `id`. Ids may be up to 1024 bytes, file
    /// names only 255: a long id is cut and completed with a hash of the
    /// whole (FNV-1a, stable across versions; the record inside holds the
    /// full id).
    fn file_of(&self, id: &str) -> PathBuf {
        const KEEP: usize = 200;
        if id.len() <= KEEP {
            return self.dir.join(format!("{id}.json"));
        }
        let mut cut = 100;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        let hash = id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        self.dir.join(format!("{}-{hash:016x}.json", &id[..cut]))
    }

    /// Delete the file of a persisted container that is not coming back
    /// (it died while the daemon was down), at the next save.
    pub fn forget(&mut self, id: &str) {
        if !self.containers.contains_key(id) {
            self.dirty.insert(id.to_string());
        }
    }

    /// Read the persisted records. A missing directory is an empty
    /// registry; a file that cannot be read or parsed is reported (the
    /// error names it) and skipped, and the others still load.
    pub fn load(runtime_dir: &Path) -> (Self, Vec<ContainerRecord>, Vec<RegistryError>) {
        let mut reg = Self::new(runtime_dir);
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let legacy = runtime_dir.join("registry.json");
        if legacy.exists() {
            match read_json::<Vec<ContainerRecord>>(&legacy) {
                Ok(r) => records.extend(r),
                Err(e) => errors.push(e),
            }
            reg.legacy = Some(legacy);
        }
        let entries = match fs::read_dir(&reg.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (reg, records, errors),
            Err(source) => {
                errors.push(RegistryError::Load {
                    path: reg.dir.clone(),
                    source,
                });
                return (reg, records, errors);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension() != Some(std::ffi::OsStr::new("json")) {
                continue; // a temp file of an interrupted write
            }
            match read_json::<ContainerRecord>(&path) {
                Ok(r) => records.push(r),
                Err(e) => errors.push(e),
            }
        }
        (reg, records, errors)
    }

    /// Write the records changed since the last save (temp file + rename,
    /// mode 0600) and remove the files of removed ones.
    pub fn save(&mut self) -> Result<(), RegistryError> {
        self.take_writes().apply()
    }

    /// [`Registry::save`] for container `id` alone: what a registration
    /// writes while it holds the registry, so that it never waits on
    /// another container's record (a churning container's holds
    /// thousands of marks). The others stay changed for their next save.
    pub fn save_only(&mut self, id: &str) -> Result<(), RegistryError> {
        if !self.dirty.remove(id) {
            return Ok(());
        }
        self.writes_of(std::iter::once(id.to_string())).apply()
    }

    /// What [`Registry::save`] would write, taken now (the records are
    /// serialized here), to be written by [`Writes::apply`] after the
    /// registry is let go: a big record is then written without holding
    /// up registrations.
    pub fn take_writes(&mut self) -> Writes {
        let ids = std::mem::take(&mut self.dirty);
        let mut w = self.writes_of(ids.into_iter());
        w.legacy = self.legacy.take();
        w
    }

    fn writes_of(&self, ids: impl Iterator<Item = String>) -> Writes {
        let files = ids
            .map(|id| {
                let path = self.file_of(&id);
                let bytes = self
                    .containers
                    .get(&id)
                    .map(|rec| serde_json::to_vec(rec).map_err(std::io::Error::other));
                (path, bytes)
            })
            .collect();
        Writes {
            dir: self.dir.clone(),
            files,
            legacy: None,
        }
    }

    pub fn insert(&mut self, rec: ContainerRecord) {
        self.dirty.insert(rec.id.clone());
        self.containers.insert(rec.id.clone(), rec);
    }

    pub fn remove(&mut self, id: &str) -> Option<ContainerRecord> {
        let rec = self.containers.remove(id)?;
        self.dirty.insert(id.to_string());
        Some(rec)
    }

    pub fn get(&self, id: &str) -> Option<&ContainerRecord> {
        self.containers.get(id)
    }

    /// Container `id`'s record to change in place; it is saved at the
    /// next save.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut ContainerRecord> {
        let rec = self.containers.get_mut(id)?;
        self.dirty.insert(id.to_string());
        Some(rec)
    }

    pub fn all(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.containers.values()
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::fanotify::ExecScope;
    use crate::watch::marks::MarkRecord;
    use crate::watch::resolve::FileId;

    #[test]
    fn persists_and_reloads() {
        let tmp = crate::testdir::TempDir::new("reg");
        let dir = tmp.path().to_path_buf();
        let mut r = Registry::new(&dir);
        r.insert(ContainerRecord {
            id: "c1".into(),
            pid: 5,
            start_time_ticks: 9,
            pid_ns: 1,
            mnt_ns: 2,
            net_ns: 3,
            cgroup: None,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::new(),
            name: None,
            image: None,
            action: Action::Deny,
            registered_at: "now".into(),
            placed: Placed {
                marks: vec![MarkRecord {
                    path: "/etc/shadow".into(),
                    id: FileId { dev: 1, ino: 2 },
                    is_dir: false,
                    handle: None,
                }],
                exec_scope: Some(ExecScope::Mount),
                create_marks: Vec::new(),
            },
        });
        r.save().unwrap();
        let (_, recs, errors) = Registry::load(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0], *r.get("c1").unwrap());
        // A second container, then a corrupt file: the error names that
        // file, and the good records still load.
        let mut c2 = recs[0].clone();
        c2.id = "c2".into();
        r.insert(c2);
        r.save().unwrap();
        fs::write(dir.join("containers/c3.json"), b"{garbage").unwrap();
        let (_, recs, errors) = Registry::load(&dir);
        assert_eq!(recs.len(), 2);
        let e = errors[0].to_string();
        assert!(e.contains("corrupt") && e.contains("c3.json"), "{e}");
        // A long id gets a shortened file name, and loads back whole.
        let mut long = recs[0].clone();
        long.id = "x".repeat(1000);
        r.insert(long.clone());
        r.save().unwrap();
        let (_, recs2, _) = Registry::load(&dir);
        assert!(recs2.contains(&long));
        r.remove(&long.id);
        r.save().unwrap();
        // Removal deletes the file.
        r.remove("c1");
        r.save().unwrap();
        assert!(!dir.join("containers/c1.json").exists());
        // An earlier version's registry.json is read, and gone after a save.
        fs::write(
            dir.join("registry.json"),
            serde_json::to_vec(&[r.get("c2").unwrap()]).unwrap(),
        )
        .unwrap();
        fs::remove_file(dir.join("containers/c3.json")).unwrap();
        let (mut r2, recs, errors) = Registry::load(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(recs.len(), 2, "c2 from both places");
        r2.save().unwrap();
        assert!(!dir.join("registry.json").exists());
    }
}
