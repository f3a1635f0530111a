//! Installing and removing one container's fanotify marks.
//!
//! Order matters: the index learns an inode *before* the kernel marks it, so
//! the first event on a new mark always finds its container and path. All
//! lookups go through [`crate::watch::resolve`], inside the container's root.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::RwLock;

use crate::registry::store::{ContainerRecord, MarkRecord};
use crate::rules::Rules;
use crate::watch::fanotify::{self, Group, WatchError};
use crate::watch::index::MarkIndex;
use crate::watch::resolve::{self, FileId, ResolveError};

/// Errors installing marks.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("container {id}: {source}")]
    Watch {
        id: String,
        #[source]
        source: WatchError,
    },
}

/// What an install did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallReport {
    pub files: usize,
    pub dirs: usize,
    /// Directories watched for new entries (coverage over time); 0 when
    /// the filesystem cannot report them and rescans are periodic instead.
    #[serde(default)]
    pub create_watched: usize,
    pub exec: Option<fanotify::ExecScope>,
    /// Whether the container had already pivoted into its rootfs.
    pub pivoted: bool,
}

/// The daemon's three fanotify groups.
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a> {
    /// Permission events on credential files.
    pub perm: &'a Group,
    /// Exec notifications (and their ignore marks).
    pub exec: &'a Group,
    /// Directory creations, when the kernel can report them.
    pub create: Option<&'a Group>,
}

/// Install every mark for `rec`, recording them in `rec.marks` and the index.
pub fn install(
    groups: Groups<'_>,
    rules: &Rules,
    rec: &mut ContainerRecord,
    index: &RwLock<MarkIndex>,
    identities: &crate::attribute::identity::Identities,
) -> Result<InstallReport, MarkError> {
    let (root, pivoted) = resolve::container_root(rec.pid, &rec.rootfs)?;
    // The image's own archivers, so a copy renamed inside it is still known.
    // Listing the bin directories is a third of a registration (a busybox
    // /bin holds 400 links), and nothing below needs it: it runs on a
    // second thread while the marks go in, and is done before the reply.
    std::thread::scope(|s| {
        let learner = s.spawn(|| identities.learn(root.as_fd(), rules.file_archivers().names()));
        let marked = place(groups, rules, rec, index, root.as_fd())
            .map(|report| InstallReport { pivoted, ..report });
        if let Err(panic) = learner.join() {
            std::panic::resume_unwind(panic);
        }
        marked
    })
}

/// The marks of [`install`], under the container's root.
fn place(
    groups: Groups<'_>,
    rules: &Rules,
    rec: &mut ContainerRecord,
    index: &RwLock<MarkIndex>,
    root: BorrowedFd<'_>,
) -> Result<InstallReport, MarkError> {
    let Groups { perm, exec, create } = groups;
    let mut found = Vec::new();
    let mut expander = resolve::Expander::new(root);
    for pattern in rules.mark_patterns() {
        found.extend(expander.expand(&pattern));
    }
    for dir in rules.watch_dirs() {
        found.extend(expander.expand(dir).into_iter().filter(|f| f.is_dir));
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|f| seen.insert(f.id));
    // Files every user-name and host lookup reads (/etc/passwd, /etc/group,
    // /etc/hosts) are left unmarked where the container's action does not
    // deny: an open of them only counts when the command line names them,
    // which the exec path sees, and an archive of their directory opens
    // /etc/shadow too. Marking them would put a permission round trip on
    // every `ls -l` and `id` in the container.
    if !rec.action.denies_open() && !rules.mark_incidental_always() {
        found.retain(|f| f.is_dir || !rules.is_incidental_path(f.path.as_os_str()));
    }

    rec.marks = found
        .iter()
        .map(|f| MarkRecord {
            path: f.path.clone(),
            id: f.id,
            is_dir: f.is_dir,
        })
        .collect();
    let entries: Vec<(FileId, std::path::PathBuf, bool)> = rec
        .marks
        .iter()
        .map(|m| (m.id, m.path.clone(), m.is_dir))
        .collect();
    index
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rec.view(), &entries);

    let watch_err = |source| MarkError::Watch {
        id: rec.id.clone(),
        source,
    };
    let mut report = InstallReport::default();
    for f in &found {
        let what = format!("{} in container {}", f.path.display(), rec.id);
        perm.mark_credential(f.fd.as_fd(), f.is_dir, true, &what)
            .map_err(watch_err)?;
        if f.is_dir {
            report.dirs += 1;
        } else {
            report.files += 1;
        }
    }
    // Coverage over time: every directory on the way to a credential path
    // (/root, /home, /home/*, /home/*/.ssh, /etc, ...) reports new entries,
    // so a .ssh made after the start is marked on the next rescan.
    rec.create_marks.clear();
    if let Some(create) = create {
        let mut seen_dirs = std::collections::HashSet::new();
        let mut all: Vec<String> = rules.mark_patterns();
        all.extend(rules.watch_dirs().iter().cloned());
        // The patterns share most of their parent directories (/root,
        // /home/*, /etc): expand each distinct prefix once.
        let mut prefixes: Vec<(usize, String)> = Vec::new();
        let mut seen_prefixes = std::collections::HashSet::new();
        for pattern in &all {
            let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
            for k in 0..comps.len() {
                let prefix = format!("/{}", comps[..k].join("/"));
                if seen_prefixes.insert(prefix.clone()) {
                    prefixes.push((k, prefix));
                }
            }
        }
        'dirs: for (k, prefix) in prefixes {
            let dirs = if k == 0 {
                resolve::open_in_root(root, Path::new("/"), true)
                    .ok()
                    .and_then(|fd| {
                        FileId::of(fd.as_fd())
                            .ok()
                            .map(|(id, _)| vec![(fd, id, "/".into())])
                    })
                    .unwrap_or_default()
            } else {
                expander
                    .expand(&prefix)
                    .into_iter()
                    .filter(|f| f.is_dir)
                    .map(|f| (f.fd, f.id, f.path))
                    .collect()
            };
            for (fd, id, path) in dirs {
                if !seen_dirs.insert(id) {
                    continue;
                }
                let what = format!("{prefix} in container {}", rec.id);
                if create.mark_creates(fd.as_fd(), true, &what).is_err() {
                    // overlayfs without file handles, say: the daemon
                    // falls back to periodic rescans for this container.
                    report.create_watched = 0;
                    break 'dirs;
                }
                rec.create_marks.push(MarkRecord {
                    path,
                    id,
                    is_dir: true,
                });
                report.create_watched += 1;
            }
        }
    }
    let scope = fanotify::exec_scope(root);
    let what = format!("root of container {} ({scope:?})", rec.id);
    exec.mark_exec(root, scope, true, &what)
        .map_err(watch_err)?;
    rec.exec_scope = Some(scope);
    report.exec = Some(scope);
    Ok(report)
}

/// Which of a container's marks to take out: what the container holds
/// alone (other containers on the same files keep theirs).
#[derive(Debug, Default)]
pub struct Orphaned {
    /// Permission marks (from the index).
    pub files: Vec<FileId>,
    /// Create-group directory marks.
    pub create_dirs: Vec<FileId>,
}

/// Remove `rec`'s marks on the inodes no other container still marks
/// (permission marks and create-group directory marks), and the exec
/// group's ignore marks.
///
/// Returns how many marks were removed. While the container's init lives we
/// resolve through it; after it exited (the usual case at poststop) we
/// resolve through the rootfs as the host sees it. Each inode is checked
/// against its recorded (dev, ino) before its mark is removed. Marks on an
/// unmounted overlay vanish with its superblock and need nothing.
pub fn remove(groups: Groups<'_>, rec: &ContainerRecord, orphaned: &Orphaned) -> usize {
    let Groups { perm, exec, create } = groups;
    // The exec group's ignore marks (ELF interpreters) may sit on this
    // container's files; they pin their inodes, so they go too.
    if rec.exec_scope.is_some() {
        let _ = crate::watch::fanotify::EventSource::flush_ignores(exec);
    }
    let root = if rec.alive() {
        resolve::container_root(rec.pid, &rec.rootfs)
            .ok()
            .map(|(fd, _)| fd)
    } else {
        None
    };
    let root = root.or_else(|| {
        nix::fcntl::open(
            &rec.rootfs,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    });
    let Some(root) = root else {
        return 0;
    };
    // Each mark by its recorded path, and only if that path still names
    // the marked inode: a path swapped since then must not unmark (or
    // trip over) another file.
    let reopen = |m: &MarkRecord| {
        resolve::open_in_root(root.as_fd(), Path::new(&m.path), false)
            .ok()
            .filter(|fd| FileId::of(fd.as_fd()).map(|(id, _)| id).ok() == Some(m.id))
    };
    let mut removed = 0;
    for m in rec.marks.iter().filter(|m| orphaned.files.contains(&m.id)) {
        let Some(fd) = reopen(m) else {
            continue;
        };
        if perm
            .mark_credential(fd.as_fd(), m.is_dir, false, "")
            .is_ok()
        {
            removed += 1;
        }
    }
    // Left in place, a create mark pins its directory's inode for the
    // daemon's lifetime (on a rootfs that is a plain directory no unmount
    // ever frees it), and creations there keep waking the daemon.
    if let Some(create) = create {
        for m in rec
            .create_marks
            .iter()
            .filter(|m| orphaned.create_dirs.contains(&m.id))
        {
            if let Some(fd) = reopen(m)
                && create.mark_creates(fd.as_fd(), false, "").is_ok()
            {
                removed += 1;
            }
        }
    }
    if let Some(scope) = rec.exec_scope {
        // The mount mark goes with the container's mount namespace; the
        // filesystem mark stays while the superblock does.
        if exec.mark_exec(root.as_fd(), scope, false, "").is_ok() {
            removed += 1;
        }
    }
    removed
}
