//! Installing and removing one container's fanotify marks.
//!
//! Order matters: the index learns an inode *before* the kernel marks it, so
//! the first event on a new mark always finds its container and path. All
//! lookups go through [`crate::watch::resolve`], inside the container's root.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::fanotify::{self, DirHandle, ExecScope, Group, WatchError};
use super::index::{ContainerView, MarkIndex};
use super::resolve::{self, FileId, ResolveError};
use crate::rules::Rules;

/// One marked inode, persisted so it can be found again for removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkRecord {
    pub path: PathBuf,
    pub id: FileId,
    pub is_dir: bool,
    /// For a directory in the create group: the handle its events carry,
    /// by which a create event finds it (see [`place_under`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<DirHandle>,
}

/// The marks one container holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    #[serde(default)]
    pub marks: Vec<MarkRecord>,
    #[serde(default)]
    pub exec_scope: Option<ExecScope>,
    /// Directories marked for creations in the create group (coverage
    /// over time), so they are unmarked when the container goes.
    #[serde(default)]
    pub create_marks: Vec<MarkRecord>,
}

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
    pub exec: Option<ExecScope>,
    /// Whether the container had already pivoted into its rootfs.
    pub pivoted: bool,
    /// Whether the container's marks reached the bound (`limits.marks`),
    /// so some credential paths found were left unmarked.
    #[serde(default)]
    pub capped: bool,
    /// Whether an expansion was cut short (a directory of more than
    /// 65,536 entries, or a pattern matching more than 16,384 paths).
    #[serde(default)]
    pub truncated: bool,
}

/// The fanotify groups that marks go into (the write group is armed by
/// the follower, not here).
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a> {
    /// Permission events on credential files.
    pub perm: &'a Group,
    /// Exec notifications (and their ignore marks).
    pub exec: &'a Group,
    /// Directory creations, when the kernel can report them.
    pub create: Option<&'a Group>,
}

/// The rules' path patterns split once into components, and the
/// directory prefixes the create group watches: a container's life
/// expands them many times (a create's marking, per event), and each
/// expansion used to split and join them again.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Patterns whose matches are marked (files or directories).
    marks: Vec<Vec<Vec<u8>>>,
    /// Directories marked to report opens of their children.
    dirs: Vec<Vec<Vec<u8>>>,
    /// Every distinct directory prefix of either, shortest first (the
    /// empty one is `/`).
    prefixes: Vec<Vec<Vec<u8>>>,
}

impl Plan {
    pub fn of(rules: &Rules) -> Self {
        let split = |p: &str| -> Vec<Vec<u8>> {
            resolve::components(p)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect()
        };
        let marks: Vec<Vec<Vec<u8>>> = rules.mark_patterns().iter().map(|p| split(p)).collect();
        let dirs: Vec<Vec<Vec<u8>>> = rules.watch_dirs().iter().map(|p| split(p)).collect();
        let mut prefixes: Vec<Vec<Vec<u8>>> = Vec::new();
        for pattern in marks.iter().chain(&dirs) {
            for k in 0..pattern.len() {
                let prefix = pattern[..k].to_vec();
                if !prefixes.contains(&prefix) {
                    prefixes.push(prefix);
                }
            }
        }
        prefixes.sort_by_key(Vec::len);
        Self {
            marks,
            dirs,
            prefixes,
        }
    }
}

/// Install every mark of the container `view` under its root (see
/// [`resolve::container_root`]), recording them in `placed` and the index:
/// at most `limit` marks in all (credential files and directories first,
/// then the create group's directories).
#[allow(clippy::too_many_arguments)]
pub fn place(
    groups: Groups<'_>,
    rules: &Rules,
    plan: &Plan,
    view: ContainerView,
    index: &RwLock<MarkIndex>,
    root: BorrowedFd<'_>,
    placed: &mut Placed,
    limit: usize,
) -> Result<InstallReport, MarkError> {
    let id = view.reference.id.clone();
    let mut expander = resolve::Expander::new(root);
    let mut found = credential_files_below(rules, plan, &view, &mut expander, Path::new("/"));
    let mut report = InstallReport::default();
    if found.len() > limit {
        found.truncate(limit);
        report.capped = true;
    }
    let earlier = std::mem::take(&mut placed.marks);
    placed.marks = found
        .iter()
        .map(|f| MarkRecord {
            path: f.path.clone(),
            id: f.id,
            is_dir: f.is_dir,
            handle: None,
        })
        .collect();
    placed
        .marks
        .extend(moved_away(groups.perm, &found, earlier));
    let entries: Vec<(FileId, PathBuf, bool)> = placed
        .marks
        .iter()
        .map(|m| (m.id, m.path.clone(), m.is_dir))
        .collect();
    super::index::write(index).insert(view, &entries);
    let watch_err = |source| MarkError::Watch {
        id: id.clone(),
        source,
    };
    for f in &found {
        let what = format!("{} in container {id}", f.path.display());
        groups
            .perm
            .mark_credential(f.fd.as_fd(), f.is_dir, true, &what)
            .map_err(watch_err)?;
        if f.is_dir {
            report.dirs += 1;
        } else {
            report.files += 1;
        }
    }
    placed.create_marks.clear();
    if let Some(create) = groups.create {
        let room = limit.saturating_sub(found.len());
        let (watched, capped) = mark_creates(create, plan, &id, root, &mut expander, placed, room);
        report.create_watched = watched;
        report.capped |= capped;
    }
    report.truncated = expander.truncated();
    let scope = fanotify::exec_scope(root);
    let what = format!("root of container {id} ({scope:?})");
    groups
        .exec
        .mark_exec(root, scope, true, &what)
        .map_err(watch_err)?;
    placed.exec_scope = Some(scope);
    report.exec = Some(scope);
    Ok(report)
}

/// Most credential inodes kept by their origin after they left it, per
/// container: past this, the oldest recorded are let go (their kernel
/// marks stay, but an open of them is judged by the path it has now).
pub const MAX_MOVED: usize = 4096;

/// A credential is the inode: marks recorded earlier that this expansion
/// no longer finds at their path (the file was renamed, moved or linked
/// elsewhere in the container) but whose inode the kernel still marks.
/// They stay in the record and the index under the path they were found
/// at, their origin, so an archiver that opens the inode anywhere is still
/// judged as opening that credential.
fn moved_away(perm: &Group, found: &[resolve::Found], earlier: Vec<MarkRecord>) -> Vec<MarkRecord> {
    let now: std::collections::HashSet<FileId> = found.iter().map(|f| f.id).collect();
    let candidates: Vec<MarkRecord> = earlier
        .into_iter()
        .filter(|m| !m.is_dir && !now.contains(&m.id))
        .collect();
    if candidates.is_empty() {
        return candidates;
    }
    // A mark dies with its inode: one still listed means the file lives.
    let alive = perm.marked_inodes();
    let mut kept: Vec<MarkRecord> = candidates
        .into_iter()
        .filter(|m| alive.contains(&m.id.ino))
        .collect();
    if kept.len() > MAX_MOVED {
        kept.drain(..kept.len() - MAX_MOVED);
    }
    kept
}

/// The credential files and directories of the rules that exist below the
/// container path `base` (`base` itself included when a pattern names
/// it), each once.
fn credential_files_below(
    rules: &Rules,
    plan: &Plan,
    view: &ContainerView,
    expander: &mut resolve::Expander<'_>,
    base: &Path,
) -> Vec<resolve::Found> {
    let names = resolve::path_names(base);
    let mut found = Vec::new();
    for pattern in &plan.marks {
        if let Some(rest) = resolve::rest_below(pattern, &names) {
            found.extend(expander.expand_below(base, rest));
        }
    }
    for dir in &plan.dirs {
        if let Some(rest) = resolve::rest_below(dir, &names) {
            found.extend(
                expander
                    .expand_below(base, rest)
                    .into_iter()
                    .filter(|f| f.is_dir),
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|f| seen.insert(f.id));
    // Files every user-name and host lookup reads (/etc/passwd, /etc/group,
    // /etc/hosts) are left unmarked where the container's action does not
    // deny: an open of them only counts when the command line names them,
    // which the exec path sees, and an archive of their directory opens
    // /etc/shadow too. Marking them would put a permission round trip on
    // every `ls -l` and `id` in the container.
    if !view.action.denies_open() && !rules.mark_incidental_always() {
        found.retain(|f| f.is_dir || !rules.is_incidental_path(f.path.as_os_str()));
    }
    found
}

/// What [`place_under`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderReport {
    /// Credential files and directories marked (again, if an earlier
    /// mark went with its inode).
    pub marks: usize,
    /// Directories added to the create group.
    pub creates: usize,
    pub capped: bool,
    pub truncated: bool,
}

/// Mark what the rules want below each of the container paths `unders`
/// (entries a create event reported), and nothing else: the work of one
/// `mkdir` is the patterns that pass through the new entry, expanded from
/// there (`/home/u5` made: `/home/u5/.ssh/id_rsa`, ..., and the create
/// group's `/home/u5`, `/home/u5/.ssh`, ...), not the whole container.
///
/// Everything found is marked, even an inode already in `placed`: a file
/// removed and made again may get the same inode number, and its mark went
/// with the old inode (`FAN_MARK_ADD` on a marked inode changes nothing).
/// The index learns each inode before the kernel marks it. At most `limit`
/// marks in `placed` in all. New directories of the create group are the
/// ones at the end of `placed.create_marks` past its length before.
#[allow(clippy::too_many_arguments)]
pub fn place_under(
    groups: Groups<'_>,
    rules: &Rules,
    plan: &Plan,
    view: &ContainerView,
    index: &RwLock<MarkIndex>,
    root: BorrowedFd<'_>,
    placed: &mut Placed,
    unders: &[PathBuf],
    limit: usize,
) -> Result<UnderReport, MarkError> {
    let id = &view.reference.id;
    let mut report = UnderReport::default();
    let mut expander = resolve::Expander::new(root);
    let mut seen = std::collections::HashSet::new();
    let mut found: Vec<resolve::Found> = Vec::new();
    for under in unders {
        for f in credential_files_below(rules, plan, view, &mut expander, under) {
            if seen.insert(f.id) {
                found.push(f);
            }
        }
    }
    // Everything found is recorded anew, after what `placed` has: one
    // inode found again (made again under the same number) is recorded
    // twice until the next [`prune`], which keeps the newest. Looking each
    // up instead cost a map of the container's marks per event, thousands
    // for a busy container.
    let used = placed.marks.len() + placed.create_marks.len();
    if found.len() > limit.saturating_sub(used) {
        found.truncate(limit.saturating_sub(used));
        report.capped = true;
    }
    if !found.is_empty() {
        let entries: Vec<(FileId, PathBuf, bool)> = found
            .iter()
            .map(|f| (f.id, f.path.clone(), f.is_dir))
            .collect();
        super::index::write(index).add(id, &entries);
    }
    for f in &found {
        let what = format!("{} in container {id}", f.path.display());
        groups
            .perm
            .mark_credential(f.fd.as_fd(), f.is_dir, true, &what)
            .map_err(|source| MarkError::Watch {
                id: id.clone(),
                source,
            })?;
        placed.marks.push(MarkRecord {
            path: f.path.clone(),
            id: f.id,
            is_dir: f.is_dir,
            handle: None,
        });
        report.marks += 1;
    }
    if let Some(create) = groups.create {
        let mut seen = std::collections::HashSet::new();
        for under in unders {
            let names = resolve::path_names(under);
            for prefix in &plan.prefixes {
                let Some(rest) = resolve::rest_below(prefix, &names) else {
                    continue;
                };
                for d in expander.expand_below(under, rest) {
                    if !d.is_dir || !seen.insert(d.id) {
                        continue;
                    }
                    if placed.marks.len() + placed.create_marks.len() >= limit {
                        report.capped = true;
                        continue;
                    }
                    let what = format!("{} in container {id}", d.path.display());
                    if create.mark_creates(d.fd.as_fd(), true, &what).is_err() {
                        continue;
                    }
                    placed.create_marks.push(MarkRecord {
                        handle: fanotify::handle_of(d.fd.as_fd()).ok(),
                        path: d.path,
                        id: d.id,
                        is_dir: true,
                    });
                    report.creates += 1;
                }
            }
        }
    }
    report.truncated = expander.truncated();
    Ok(report)
}

/// What [`prune`] took out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Credential inodes gone (with their marks), or recorded twice.
    pub marks: Vec<FileId>,
    /// Create-group directories gone.
    pub create_dirs: Vec<MarkRecord>,
}

/// Forget what a container removed: a mark lives exactly as long as its
/// inode, so a record whose inode no group marks any longer is of a file
/// or directory that is gone (a credential moved elsewhere keeps its mark,
/// and its record). Of an inode recorded twice (made again under the same
/// number, see [`place_under`]) the newest record stays. `alive` is the
/// permission group's marked inodes (`Group::marked_inodes`), read once by
/// the caller. The index is not touched here; the caller drops
/// `Pruned::marks` from it. Cheap beside a rescan: one read of each
/// group's mark list, no lookup in the container.
pub fn prune(
    groups: Groups<'_>,
    placed: &mut Placed,
    alive: &std::collections::HashSet<u64>,
) -> Pruned {
    let mut pruned = Pruned::default();
    keep_newest_alive(&mut placed.marks, alive, |m, superseded| {
        // A record a newer one of the same inode replaces: the index
        // keeps that inode.
        if !superseded {
            pruned.marks.push(m.id);
        }
    });
    if let Some(create) = groups.create {
        let alive = create.marked_inodes();
        keep_newest_alive(&mut placed.create_marks, &alive, |m, _| {
            pruned.create_dirs.push(m.clone());
        });
    }
    pruned
}

/// Keep in `records` the newest record of each inode still in `alive` (a
/// path marked again is listed again; the later record stands). Each
/// record dropped goes to `dropped`, with whether a newer record of its
/// inode stays.
fn keep_newest_alive(
    records: &mut Vec<MarkRecord>,
    alive: &std::collections::HashSet<u64>,
    mut dropped: impl FnMut(&MarkRecord, bool),
) {
    let mut newest = std::collections::HashSet::new();
    let mut keep = vec![false; records.len()];
    for (i, m) in records.iter().enumerate().rev() {
        keep[i] = alive.contains(&m.id.ino) && newest.insert(m.id);
    }
    let mut k = keep.iter();
    records.retain(|m| {
        let kept = *k.next().unwrap_or(&true);
        if !kept {
            dropped(m, newest.contains(&m.id));
        }
        kept
    });
}

/// Coverage over time: every directory on the way to a credential path
/// (/root, /home, /home/*, /home/*/.ssh, /etc, ...) reports new entries,
/// so a .ssh made after the start is marked at once (see [`place_under`]).
/// At most `room` directories. Returns how many directories report (0 when
/// the filesystem cannot, and the daemon then rescans periodically), and
/// whether `room` cut them short.
fn mark_creates(
    create: &Group,
    plan: &Plan,
    id: &str,
    root: BorrowedFd<'_>,
    expander: &mut resolve::Expander<'_>,
    placed: &mut Placed,
    room: usize,
) -> (usize, bool) {
    let mut watched = 0;
    let mut seen_dirs = std::collections::HashSet::new();
    // One `fstatfs` per device, not per directory: a filesystem's id is
    // its superblock's, and so is a device number.
    let mut fsids: std::collections::HashMap<u64, [i32; 2]> = std::collections::HashMap::new();
    for prefix in &plan.prefixes {
        // The directories the credential expansion already opened are
        // marked through those fds (no open and close again of each).
        let dirs = if prefix.is_empty() {
            resolve::path_in_root(root, Path::new("/"), true)
                .ok()
                .and_then(|fd| {
                    FileId::of(fd.as_fd())
                        .ok()
                        .map(|(id, _)| vec![(std::rc::Rc::new(fd), id, "/".into())])
                })
                .unwrap_or_default()
        } else {
            expander.expand_dirs_below(Path::new("/"), prefix)
        };
        for (fd, fid, path) in dirs {
            if !seen_dirs.insert(fid) {
                continue;
            }
            if watched >= room {
                return (watched, true);
            }
            let what = format!("{} in container {id}", path.display());
            if create.mark_creates(fd.as_fd(), true, &what).is_err() {
                return (0, false);
            }
            let fsid = match fsids.entry(fid.dev) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => fanotify::fsid_of_fd(fd.as_fd())
                    .ok()
                    .map(|fsid| *e.insert(fsid)),
            };
            placed.create_marks.push(MarkRecord {
                path,
                id: fid,
                is_dir: true,
                handle: fsid.and_then(|fsid| fanotify::handle_in(fd.as_fd(), fsid).ok()),
            });
            watched += 1;
        }
    }
    (watched, false)
}

/// Where a container's files are found again for removal.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    /// The init, while it lives: resolve through it.
    pub live_pid: Option<i32>,
    /// Absolute rootfs path as the host sees it, after the init exited.
    pub rootfs: &'a Path,
}

impl Root<'_> {
    fn open(self) -> Option<OwnedFd> {
        let live = self
            .live_pid
            .and_then(|pid| resolve::container_root(pid, self.rootfs).ok())
            .map(|(fd, _)| fd);
        live.or_else(|| {
            nix::fcntl::open(
                self.rootfs,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        })
    }
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
pub fn remove(groups: Groups<'_>, placed: &Placed, at: Root<'_>, orphaned: &Orphaned) -> usize {
    let Groups { perm, exec, create } = groups;
    // The exec group's ignore marks (ELF interpreters) may sit on this
    // container's files; they pin their inodes, so they go too.
    if placed.exec_scope.is_some() {
        let _ = fanotify::EventSource::flush_ignores(exec);
    }
    let Some(root) = at.open() else {
        return 0;
    };
    // Each mark by its recorded path, and only if that path still names
    // the marked inode: a path swapped since then must not unmark (or
    // trip over) another file.
    let reopen = |m: &MarkRecord| {
        resolve::path_in_root(root.as_fd(), Path::new(&m.path), false)
            .ok()
            .filter(|fd| FileId::of(fd.as_fd()).map(|(id, _)| id).ok() == Some(m.id))
    };
    let mut removed = 0;
    for m in placed
        .marks
        .iter()
        .filter(|m| orphaned.files.contains(&m.id))
    {
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
        for m in placed
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
    if let Some(scope) = placed.exec_scope {
        // The mount mark goes with the container's mount namespace; the
        // filesystem mark stays while the superblock does.
        if exec.mark_exec(root.as_fd(), scope, false, "").is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    //! With real fanotify groups (root; CI runs these as root), on a
    //! throwaway tree: what a create's marking adds, and what a prune
    //! takes out once the files are gone. No exec or mount mark is made.
    use super::*;
    use crate::config::{Action, RulesConfig};
    use crate::watch::index::ContainerRef;

    fn view(id: &str) -> ContainerView {
        ContainerView {
            reference: ContainerRef {
                id: id.into(),
                ..Default::default()
            },
            action: Action::Alert,
            init_pid: 1,
            init_start: 1,
            pid_ns: 1,
            mnt_ns: 2,
            net_ns: 0,
            cgroup: None,
            annotations: Default::default(),
        }
    }

    fn fid(path: &Path) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    #[test]
    fn an_entry_made_is_marked_below_itself_and_pruned_once_gone() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the unit tests as root"
            );
            return;
        }
        let tmp = crate::testdir::TempDir::new("place-under");
        let root_path = tmp.path().join("rootfs");
        for d in ["home/alice", "root", "etc"] {
            std::fs::create_dir_all(root_path.join(d)).unwrap();
        }
        let (perm, exec, create) = (
            Group::permission().unwrap(),
            Group::exec().unwrap(),
            Group::create().unwrap(),
        );
        let groups = Groups {
            perm: &perm,
            exec: &exec,
            create: Some(&create),
        };
        let rules = Rules::compile(&RulesConfig::default()).unwrap();
        let plan = Plan::of(&rules);
        let index = RwLock::new(MarkIndex::default());
        index.write().unwrap().insert(view("c1"), &[]);
        let root = nix::fcntl::open(
            root_path.as_path(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let under = |placed: &mut Placed, path: &str, limit: usize| {
            let (v, at) = (view("c1"), [PathBuf::from(path)]);
            place_under(
                groups,
                &rules,
                &plan,
                &v,
                &index,
                root.as_fd(),
                placed,
                &at,
                limit,
            )
            .unwrap()
        };
        let mut placed = Placed::default();
        // The whole tree first, as from "/": the create group's
        // directories below / (/home, /home/alice, /root, /etc; a full
        // `place` marks / itself) and no file.
        let r = under(&mut placed, "/", 1000);
        assert_eq!(r.creates, 4, "{r:?} {placed:?}");
        assert!(placed.create_marks.iter().all(|m| m.handle.is_some()));
        // bob's home and key, made after: the entry /home/bob is all the
        // work.
        std::fs::create_dir_all(root_path.join("home/bob/.ssh")).unwrap();
        let key = root_path.join("home/bob/.ssh/id_rsa");
        std::fs::write(&key, "k").unwrap();
        let before = placed.create_marks.len();
        let r = under(&mut placed, "/home/bob", 1000);
        assert_eq!(r.marks, 2, "the key and its directory: {placed:?}");
        let dirs: Vec<&Path> = placed.create_marks[before..]
            .iter()
            .map(|m| m.path.as_path())
            .collect();
        assert_eq!(dirs, [Path::new("/home/bob"), Path::new("/home/bob/.ssh")]);
        assert!(
            perm.marked_inodes().contains(&fid(&key).ino),
            "the kernel marks the key"
        );
        let lookup = index
            .read()
            .unwrap()
            .lookup(fid(&key), Some("c1"))
            .map(|m| m.path.clone());
        assert_eq!(lookup.as_deref(), Some(Path::new("/home/bob/.ssh/id_rsa")));
        // Past the bound nothing more is marked, and it says so.
        std::fs::create_dir_all(root_path.join("home/carol/.ssh")).unwrap();
        std::fs::write(root_path.join("home/carol/.ssh/id_rsa"), "k").unwrap();
        let full = placed.marks.len() + placed.create_marks.len();
        let r = under(&mut placed, "/home/carol", full);
        assert!(r.capped && r.marks == 0 && r.creates == 0, "{r:?}");
        // bob leaves: his records go at the prune, alice's stay.
        let key_id = fid(&key);
        std::fs::remove_dir_all(root_path.join("home/bob")).unwrap();
        let pruned = prune(groups, &mut placed, &perm.marked_inodes());
        assert!(pruned.marks.contains(&key_id), "{pruned:?}");
        assert!(
            placed
                .marks
                .iter()
                .all(|m| !m.path.starts_with("/home/bob"))
        );
        assert!(
            placed
                .create_marks
                .iter()
                .all(|m| !m.path.starts_with("/home/bob"))
        );
        assert!(
            placed
                .create_marks
                .iter()
                .any(|m| m.path == Path::new("/home/alice"))
        );
        assert_eq!(pruned.create_dirs.len(), 2, "{pruned:?}");
    }
}
