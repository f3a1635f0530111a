//! fanotify: the four groups, their marks, and the raw event stream.
//!
//! * The **permission group** (`FAN_CLASS_CONTENT`) carries `FAN_OPEN_PERM`
//!   inode marks on each credential file found in a container's rootfs, and
//!   directory marks with `FAN_EVENT_ON_CHILD` on the credential
//!   directories. Inode marks fire on every path to the inode: hard links,
//!   symlinks, bind mounts and private mount namespaces.
//! * The **exec group** (`FAN_CLASS_NOTIF`) carries one `FAN_OPEN_EXEC` mark
//!   per container: a filesystem mark on the container's own overlay
//!   superblock, or, when the rootfs is a plain directory of a host
//!   filesystem, a mount mark on the container's root mount, so host
//!   processes never generate events.
//! * The **create group** (`FAN_REPORT_DFID_NAME`, where the kernel has it)
//!   carries `FAN_CREATE | FAN_MOVED_TO` marks on every directory on the
//!   way to a credential path, so paths made after the start are marked.
//! * The **write group** (`FAN_CLASS_NOTIF`) carries a `FAN_CLOSE_WRITE`
//!   mark on a container's root, in the exec mark's scope, once a process
//!   in it has read a credential (see `answer::follow`).
//!
//! Reading is behind the [`EventSource`] seam, so the decision loop can be
//! driven from a socketpair carrying recorded records in unit tests.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use nix::sys::statfs::fstatfs;

/// Size of one `fanotify_event_metadata` record header.
pub const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
/// `FAN_ALLOW` / `FAN_DENY`.
pub const FAN_ALLOW: u32 = libc::FAN_ALLOW;
pub const FAN_DENY: u32 = libc::FAN_DENY;
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Errors from fanotify setup and marks.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "fanotify_init for the {group} group failed (needs root and CONFIG_FANOTIFY_ACCESS_PERMISSIONS): {source}"
    )]
    Init {
        group: &'static str,
        #[source]
        source: Errno,
    },
    #[error("fanotify_mark on {what} failed: {source}")]
    Mark {
        what: String,
        #[source]
        source: Errno,
    },
}

/// One event as read from the group: the kernel gave us `fd`, which we own.
#[derive(Debug)]
pub struct RawEvent {
    pub mask: u64,
    pub pid: i32,
    pub fd: Option<OwnedFd>,
    /// For a group that reports file ids (the create group): the `fsid`
    /// of the record's first `fanotify_event_info_fid`. A create's creator
    /// may be gone when its event is read; the filesystem still says which
    /// containers it can be in.
    pub fsid: Option<[i32; 2]>,
    /// For a group that reports directory ids and names (the create
    /// group, `FAN_REPORT_DFID_NAME`): the directory the event happened in
    /// and the name of the entry, so the work it makes is that entry's, not
    /// the whole container's.
    pub dir_entry: Option<DirEntry>,
}

/// A directory's file handle as fanotify reports it (and as
/// [`handle_of`] computes it for a directory we mark), with its
/// filesystem: together they name one directory.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DirHandle {
    pub fsid: [i32; 2],
    pub kind: i32,
    pub bytes: Vec<u8>,
}

/// The `FAN_EVENT_INFO_TYPE_DFID_NAME` record of an event: where, and the
/// entry's name (raw bytes, not UTF-8 checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub dir: DirHandle,
    pub name: std::ffi::OsString,
}

/// Longest file handle read from an event or asked of the kernel
/// (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_BYTES: usize = 128;
const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;

/// What the info records after an event's metadata say: the first
/// file-id record's fsid, and the directory entry of a `DFID_NAME` one.
/// Records of other types are stepped over; a record whose length does
/// not fit ends the walk (the event itself stands).
fn parse_info(mut info: &[u8]) -> (Option<[i32; 2]>, Option<DirEntry>) {
    let (mut fsid, mut entry) = (None, None);
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            break;
        }
        let rec = &info[..len];
        info = &info[len..];
        if !matches!(kind, INFO_FID | INFO_DFID_NAME | INFO_DFID) || rec.len() < 20 {
            continue;
        }
        let int = |at: usize| i32::from_ne_bytes(rec[at..at + 4].try_into().unwrap_or_default());
        let this_fsid = [int(4), int(8)];
        fsid.get_or_insert(this_fsid);
        if kind != INFO_DFID_NAME || entry.is_some() {
            continue;
        }
        let handle_bytes = u32::from_ne_bytes(rec[12..16].try_into().unwrap_or_default()) as usize;
        let start: usize = 20;
        let Some(end) = start
            .checked_add(handle_bytes)
            .filter(|&e| e <= rec.len() && handle_bytes <= MAX_HANDLE_BYTES)
        else {
            continue;
        };
        // The name follows the handle, NUL-terminated and padded.
        let tail = &rec[end..];
        let name = &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())];
        if name.is_empty() {
            continue;
        }
        entry = Some(DirEntry {
            dir: DirHandle {
                fsid: this_fsid,
                kind: int(16),
                bytes: rec[start..end].to_vec(),
            },
            name: <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name)
                .to_os_string(),
        });
    }
    (fsid, entry)
}

/// The file handle of the directory `fd` as fanotify reports it in its
/// events (`name_to_handle_at` with `AT_HANDLE_FID`: an id, even on a
/// filesystem whose handles cannot be opened, overlayfs among them), with
/// the filesystem's id.
pub fn handle_of(fd: BorrowedFd<'_>) -> io::Result<DirHandle> {
    handle_in(fd, fsid_of_fd(fd)?)
}

/// The filesystem id of the file behind `fd`, as fanotify reports it.
pub fn fsid_of_fd(fd: BorrowedFd<'_>) -> io::Result<[i32; 2]> {
    Ok(fsid_ints(
        fstatfs(fd).map_err(io::Error::from)?.filesystem_id(),
    ))
}

/// A filesystem id as the two ints fanotify's records carry.
fn fsid_ints(id: nix::sys::statfs::fsid_t) -> [i32; 2] {
    // SAFETY: `fsid_t` is two plain ints with private fields; reading them
    // as such is what the kernel's own `__kernel_fsid_t` is.
    unsafe { std::mem::transmute(id) }
}

/// [`handle_of`] for a directory whose filesystem id the caller knows
/// (one `fstatfs` per filesystem, not per directory).
pub fn handle_in(fd: BorrowedFd<'_>, fsid: [i32; 2]) -> io::Result<DirHandle> {
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; MAX_HANDLE_BYTES],
    }
    const AT_HANDLE_FID: libc::c_int = 0x200;
    let mut h = FileHandle {
        handle_bytes: MAX_HANDLE_BYTES as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` with room for MAX_HANDLE_SZ
    // bytes (its handle_bytes says so); the path is an empty C string with
    // AT_EMPTY_PATH, so only `fd` is looked at; `mount_id` is a valid int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH | AT_HANDLE_FID,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_BYTES);
    Ok(DirHandle {
        fsid,
        kind: h.handle_type,
        bytes: h.f_handle[..n].to_vec(),
    })
}

impl RawEvent {
    /// Whether the kernel waits for our answer.
    pub fn is_permission(&self) -> bool {
        self.mask & (libc::FAN_OPEN_PERM | libc::FAN_ACCESS_PERM | libc::FAN_OPEN_EXEC_PERM) != 0
    }

    /// Whether the queue overflowed (events were lost).
    pub fn is_overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }
}

/// A batch of fanotify records that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("fanotify metadata version {found}, expected {expected}")]
    Version { found: u8, expected: u8 },
    #[error("fanotify record of impossible length {len} at offset {offset}")]
    Length { len: usize, offset: usize },
}

/// Parse the records in `buf`. Records are variable length (`event_len`),
/// so the parser steps by each record's own length, never by a fixed size.
/// A record with a foreign version or an impossible length ends the parse;
/// the count of bytes consumed is returned with the events.
pub fn parse_events(buf: &[u8], out: &mut Vec<RawEvent>) -> Result<usize, ParseError> {
    let mut off = 0;
    while buf.len() - off >= METADATA_LEN {
        let rec = &buf[off..];
        let event_len = u32::from_ne_bytes(rec[0..4].try_into().unwrap_or_default()) as usize;
        let vers = rec[4];
        let metadata_len = u16::from_ne_bytes(rec[6..8].try_into().unwrap_or_default()) as usize;
        let mask = u64::from_ne_bytes(rec[8..16].try_into().unwrap_or_default());
        let fd = i32::from_ne_bytes(rec[16..20].try_into().unwrap_or_default());
        let pid = i32::from_ne_bytes(rec[20..24].try_into().unwrap_or_default());
        if vers != libc::FANOTIFY_METADATA_VERSION {
            return Err(ParseError::Version {
                found: vers,
                expected: libc::FANOTIFY_METADATA_VERSION,
            });
        }
        if event_len < METADATA_LEN || metadata_len < METADATA_LEN || event_len > buf.len() - off {
            return Err(ParseError::Length {
                len: event_len,
                offset: off,
            });
        }
        let fd = if fd >= 0 {
            // SAFETY: the kernel installed this fd in our table for this
            // event and nothing else owns it; we close it exactly once when
            // the OwnedFd drops.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            None
        };
        // Info records follow the metadata only in groups that report
        // file ids.
        let (fsid, dir_entry) = parse_info(&rec[metadata_len.min(event_len)..event_len]);
        out.push(RawEvent {
            mask,
            pid,
            fd,
            fsid,
            dir_entry,
        });
        off += event_len;
    }
    Ok(off)
}

/// The filesystem id of the filesystem behind `path` (`statfs` `f_fsid`),
/// as fanotify reports it.
pub fn fsid_of(path: &std::path::Path) -> Option<[i32; 2]> {
    Some(fsid_ints(
        nix::sys::statfs::statfs(path).ok()?.filesystem_id(),
    ))
}

/// Where decision loops read events and write answers.
pub trait EventSource: Send + Sync {
    /// Wait up to `timeout` for events; `Ok(false)` on timeout.
    fn wait(&self, timeout: Duration) -> io::Result<bool>;
    /// Read raw records into `buf`.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Answer a permission event.
    fn respond(&self, fd: RawFd, response: u32) -> io::Result<()>;
    /// Stop reporting execs of the file behind `fd` (an ignore mark), until
    /// the file is modified or [`EventSource::flush_ignores`]. Sources
    /// without a kernel behind them cannot ignore.
    fn ignore_exec(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Take back one [`EventSource::ignore_exec`]: the file's execs are
    /// reported again.
    fn unignore_exec(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Drop every ignore mark.
    fn flush_ignores(&self) -> io::Result<()> {
        Ok(())
    }
}

fn wait_fd(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    // ppoll, not poll: the exec loop sleeps for tens of microseconds
    // between probes, below poll's millisecond resolution.
    let ts = nix::sys::time::TimeSpec::from_duration(timeout);
    match nix::poll::ppoll(&mut fds, Some(ts), None) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write one `fanotify_response` record to `fd`.
pub fn write_response(to: BorrowedFd<'_>, fd: RawFd, response: u32) -> io::Result<()> {
    let rec = libc::fanotify_response { fd, response };
    // SAFETY: fanotify_response is a plain repr(C) struct of two 32-bit
    // integers with no padding; viewing it as bytes is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&rec as *const libc::fanotify_response).cast::<u8>(),
            std::mem::size_of::<libc::fanotify_response>(),
        )
    };
    loop {
        match nix::unistd::write(to, bytes) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A real fanotify group.
#[derive(Debug)]
pub struct Group {
    fan: Fanotify,
    name: &'static str,
}

impl Group {
    /// Add or remove `FAN_OPEN_EXEC` in the ignore mask of the inode
    /// behind `fd`.
    fn exec_ignore_mask(&self, op: MarkFlags, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.fan
            .mark::<_, str>(
                op | MarkFlags::FAN_MARK_IGNORED_MASK,
                MaskFlags::FAN_OPEN_EXEC,
                fd,
                None,
            )
            .map_err(io::Error::from)
    }

    /// The inode numbers this group holds inode marks on, from the
    /// kernel's own list (`/proc/self/fdinfo/<fd>`, one `fanotify ino:`
    /// line per mark). A mark lives exactly as long as its inode, so this
    /// says which recorded credential inodes still exist, wherever they
    /// were moved.
    pub fn marked_inodes(&self) -> std::collections::HashSet<u64> {
        let path = format!("/proc/self/fdinfo/{}", self.fan.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("fanotify ino:"))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect()
    }
}

impl EventSource for Group {
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        wait_fd(self.fan.as_fd(), timeout)
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.fan.as_fd(), buf)
    }
    fn respond(&self, fd: RawFd, response: u32) -> io::Result<()> {
        write_response(self.fan.as_fd(), fd, response)
    }
    fn ignore_exec(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // No FAN_MARK_IGNORED_SURV_MODIFY: a write to the file drops the
        // ignore mark, so a replaced interpreter is judged again.
        self.exec_ignore_mask(MarkFlags::FAN_MARK_ADD, fd)
    }
    fn unignore_exec(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // Removing the last bit of an inode mark's ignore mask destroys
        // the mark, so the inode is no longer pinned either.
        self.exec_ignore_mask(MarkFlags::FAN_MARK_REMOVE, fd)
    }
    /// Drop every inode mark of the group. In the exec group those are
    /// only the ignore marks of [`EventSource::ignore_exec`] (its real marks
    /// are mount and filesystem marks), and an inode mark pins its inode:
    /// flushing them when a container goes keeps deleted rootfs files from
    /// living on. Files still in use are ignored again on their next exec.
    fn flush_ignores(&self) -> io::Result<()> {
        self.flush(0)
    }
}

/// What a mark on a container root reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootEvents {
    Exec,
    CloseWrite,
}

/// How the exec mark is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecScope {
    /// The container's own superblock (overlay).
    Filesystem,
    /// The container's root mount (rootfs is a host directory).
    Mount,
}

impl Group {
    fn init(name: &'static str, class: InitFlags) -> Result<Self, WatchError> {
        let flags = class | InitFlags::FAN_CLOEXEC | InitFlags::FAN_UNLIMITED_MARKS;
        let fan = Fanotify::init(
            flags,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|source| WatchError::Init {
            group: name,
            source,
        })?;
        Ok(Self { fan, name })
    }

    /// A group handed on by the daemon this process replaced (see
    /// `crate::upgrade`), with the marks it holds.
    pub fn adopt(name: &'static str, fd: OwnedFd) -> Self {
        // SAFETY: the caller checked that `fd` is a fanotify group (its
        // /proc/self/fd link is `anon_inode:[fanotify]`) and owns it.
        let fan = unsafe { Fanotify::from_owned_fd(fd) };
        Self { fan, name }
    }

    /// Drop every mark of the group: inode, mount and filesystem ones.
    pub fn flush_marks(&self) -> io::Result<()> {
        for kind in [0, libc::FAN_MARK_MOUNT, libc::FAN_MARK_FILESYSTEM] {
            self.flush(kind)?;
        }
        Ok(())
    }

    /// Drop the group's marks of one kind (0: inode marks).
    fn flush(&self, kind: libc::c_uint) -> io::Result<()> {
        // SAFETY: fanotify_mark with FAN_MARK_FLUSH takes no path; the
        // group fd is valid for the call (borrowed from self).
        let rc = unsafe {
            libc::fanotify_mark(
                self.fan.as_fd().as_raw_fd(),
                libc::FAN_MARK_FLUSH | kind,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The permission group for credential opens.
    ///
    /// Its queue is unbounded: a permission event the kernel cannot queue
    /// is dropped *and the access allowed*, with an overflow event as the
    /// only trace. Each queued permission event holds its opener blocked,
    /// so the queue is bounded by the processes that can block on it, not
    /// by a count the kernel would overflow silently.
    pub fn permission() -> Result<Self, WatchError> {
        Self::init(
            "permission",
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_UNLIMITED_QUEUE,
        )
    }

    /// The notification group for execs.
    pub fn exec() -> Result<Self, WatchError> {
        Self::init("exec", InitFlags::FAN_CLASS_NOTIF)
    }

    /// The notification group for directory creations (coverage over
    /// time): `FAN_CREATE` needs a group that reports directory file ids.
    pub fn create() -> Result<Self, WatchError> {
        let class =
            InitFlags::FAN_CLASS_NOTIF | InitFlags::from_bits_retain(libc::FAN_REPORT_DFID_NAME);
        Self::init("create", class)
    }

    /// The notification group for writes (`FAN_CLOSE_WRITE`), armed on a
    /// container only once a process in it has read a credential.
    pub fn write() -> Result<Self, WatchError> {
        Self::init("write", InitFlags::FAN_CLASS_NOTIF)
    }

    /// A mount or filesystem mark on a container root, in `scope`: exec
    /// (the exec group) or close-after-write (the write group).
    pub fn mark_root(
        &self,
        root: BorrowedFd<'_>,
        scope: ExecScope,
        add: bool,
        events: RootEvents,
        what: &str,
    ) -> Result<(), WatchError> {
        let mask = match events {
            RootEvents::Exec => MaskFlags::FAN_OPEN_EXEC,
            RootEvents::CloseWrite => MaskFlags::FAN_CLOSE_WRITE,
        };
        let mut flags = if add {
            MarkFlags::FAN_MARK_ADD
        } else {
            MarkFlags::FAN_MARK_REMOVE
        };
        flags |= match scope {
            ExecScope::Filesystem => MarkFlags::FAN_MARK_FILESYSTEM,
            ExecScope::Mount => MarkFlags::FAN_MARK_MOUNT,
        };
        self.mark(flags, mask, root, what)
    }

    /// Add (or remove) a create/rename-into mark on the directory behind
    /// `fd`.
    pub fn mark_creates(
        &self,
        fd: BorrowedFd<'_>,
        add: bool,
        what: &str,
    ) -> Result<(), WatchError> {
        let action = if add {
            MarkFlags::FAN_MARK_ADD
        } else {
            MarkFlags::FAN_MARK_REMOVE
        };
        let mask = MaskFlags::FAN_CREATE | MaskFlags::FAN_MOVED_TO | MaskFlags::FAN_ONDIR;
        self.mark(action | MarkFlags::FAN_MARK_ONLYDIR, mask, fd, what)
    }

    /// The group's name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn mark(
        &self,
        flags: MarkFlags,
        mask: MaskFlags,
        fd: BorrowedFd<'_>,
        what: &str,
    ) -> Result<(), WatchError> {
        // fanotify_mark takes no O_PATH fd as the object itself (EBADF),
        // and the resolver opens the files it only marks with O_PATH (no
        // open of a file in a marked directory, no overlay backing file,
        // no permission event of the daemon's own). The fd's magic link in
        // /proc/self/fd names exactly its file, not a path to walk again;
        // it goes first, as nearly every mark is of an O_PATH fd (trying
        // the fd first cost a failed call per mark). The fd itself is the
        // fallback where /proc is missing.
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let r = match self.fan.mark(flags, mask, fd, Some(link.as_str())) {
            // ENOENT is also a removal of a mark that is not there: fall
            // back only when the link itself is what is missing.
            Err(Errno::ENOENT) if !std::path::Path::new("/proc/self/fd").exists() => {
                self.fan.mark::<_, str>(flags, mask, fd, None)
            }
            r => r,
        };
        r.map_err(|source| WatchError::Mark {
            what: what.to_string(),
            source,
        })
    }

    /// Add (or remove) an open-permission mark on the inode behind `fd`; on
    /// a directory, children's opens are reported too.
    pub fn mark_credential(
        &self,
        fd: BorrowedFd<'_>,
        is_dir: bool,
        add: bool,
        what: &str,
    ) -> Result<(), WatchError> {
        let mut mask = MaskFlags::FAN_OPEN_PERM;
        if is_dir {
            mask |= MaskFlags::FAN_EVENT_ON_CHILD;
        }
        let action = if add {
            MarkFlags::FAN_MARK_ADD
        } else {
            MarkFlags::FAN_MARK_REMOVE
        };
        self.mark(action, mask, fd, what)
    }

    /// Add (or remove) the exec mark for a container root.
    pub fn mark_exec(
        &self,
        root: BorrowedFd<'_>,
        scope: ExecScope,
        add: bool,
        what: &str,
    ) -> Result<(), WatchError> {
        self.mark_root(root, scope, add, RootEvents::Exec, what)
    }

    /// Raw fd, for diagnostics.
    pub fn raw_fd(&self) -> RawFd {
        self.fan.as_raw_fd()
    }
}

/// Which exec scope fits a container root: its own overlay superblock gets
/// a filesystem mark; anything else (a plain directory on a host
/// filesystem, whose superblock the host shares) gets a mount mark.
pub fn exec_scope(root: BorrowedFd<'_>) -> ExecScope {
    match fstatfs(root) {
        Ok(st) if st.filesystem_type().0 == OVERLAYFS_SUPER_MAGIC => ExecScope::Filesystem,
        _ => ExecScope::Mount,
    }
}

/// The mount an open fd was reached through (`statx`'s `STATX_MNT_ID`)
/// and the device its inode reports: together they say which filesystem
/// instance holds the file, where `st_dev` alone does not (overlayfs
/// reports a lower layer's device for files it has not copied up).
pub fn mount_of(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    statx_mount(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
}

/// [`mount_of`] for a path (`/proc/<pid>/root`, a container's root).
pub fn mount_of_path(path: &std::path::Path) -> io::Result<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    statx_mount(libc::AT_FDCWD, &c, 0)
}

fn statx_mount(dirfd: RawFd, path: &std::ffi::CStr, flags: i32) -> io::Result<(u64, u64)> {
    // SAFETY: `struct statx` is plain integers; all zeroes is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes at most one `struct statx` into `st`, which
    // lives for the call; `path` is a valid NUL-terminated string and
    // `dirfd` is a valid fd or AT_FDCWD.
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, libc::STATX_MNT_ID, &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        // Kernels before 5.8 do not report it.
        return Err(io::ErrorKind::Unsupported.into());
    }
    let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
    Ok((st.stx_mnt_id, dev))
}

/// The path of an open fd as the kernel names it: the opener's own
/// spelling, relative to the mount namespace the file was reached in.
pub fn fd_path(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Recorded fanotify records and one recording event source, for
    //! driving the loops without a kernel.
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    /// One record as the kernel lays it out.
    pub fn record(mask: u64, fd: RawFd, pid: i32) -> Vec<u8> {
        let mut v = Vec::with_capacity(METADATA_LEN);
        v.extend_from_slice(&(METADATA_LEN as u32).to_ne_bytes());
        v.push(libc::FANOTIFY_METADATA_VERSION);
        v.push(0);
        v.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&fd.to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        v
    }

    /// The fake [`EventSource`]: serves the bytes written into its feed
    /// (a socketpair), records every answer with when it came, and counts
    /// ignore marks and flushes instead of making them.
    pub struct Recording {
        feed: Option<UnixStream>,
        t0: Instant,
        /// (fd, response, time since the source was made).
        pub answers: Mutex<Vec<(RawFd, u32, Duration)>>,
        pub ignored: AtomicU64,
        pub unignored: AtomicU64,
        pub flushes: AtomicU64,
    }

    impl Recording {
        /// A source with a feed; write records into the returned end.
        pub fn fed() -> (Self, UnixStream) {
            let (tx, rx) = UnixStream::pair().expect("socketpair");
            (Self::with(Some(rx)), tx)
        }

        /// A source that never has events.
        pub fn idle() -> Self {
            Self::with(None)
        }

        fn with(feed: Option<UnixStream>) -> Self {
            Self {
                feed,
                t0: Instant::now(),
                answers: Mutex::new(Vec::new()),
                ignored: AtomicU64::new(0),
                unignored: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
            }
        }

        /// The answers so far.
        pub fn answers(&self) -> Vec<(RawFd, u32, Duration)> {
            self.answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
    }

    impl EventSource for Recording {
        fn wait(&self, t: Duration) -> io::Result<bool> {
            // As the kernel's group: readable only while records wait.
            match &self.feed {
                Some(f) => wait_fd(f.as_fd(), t),
                None => Ok(false),
            }
        }
        fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            use std::io::Read;
            match &self.feed {
                Some(f) => (&mut &*f).read(buf),
                None => Ok(0),
            }
        }
        fn respond(&self, fd: RawFd, response: u32) -> io::Result<()> {
            self.answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((fd, response, self.t0.elapsed()));
            Ok(())
        }
        fn ignore_exec(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn unignore_exec(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
            self.unignored.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn flush_ignores(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::record;
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn parses_variable_length_records_and_takes_fds() {
        let f1 = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let mut buf = record(libc::FAN_OPEN_PERM, f1, 10);
        // A longer record (as with info records appended) is stepped over.
        let mut long = record(libc::FAN_OPEN_EXEC, -1, 11);
        long[0..4].copy_from_slice(&((METADATA_LEN + 16) as u32).to_ne_bytes());
        long.extend_from_slice(&[0u8; 16]);
        buf.extend_from_slice(&long);
        buf.extend_from_slice(&record(libc::FAN_Q_OVERFLOW, -1, 0));
        let mut out = Vec::new();
        let used = parse_events(&buf, &mut out).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(out.len(), 3);
        assert!(out[0].is_permission() && out[0].fd.is_some() && out[0].pid == 10);
        assert!(!out[1].is_permission() && out[1].fd.is_none() && out[1].pid == 11);
        assert!(out[2].is_overflow());
    }

    #[test]
    fn rejects_bad_version_and_impossible_lengths() {
        let mut bad = record(0, -1, 1);
        bad[4] = 99;
        assert!(
            parse_events(&bad, &mut Vec::new())
                .unwrap_err()
                .to_string()
                .contains("version 99")
        );
        let mut short = record(0, -1, 1);
        short[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse_events(&short, &mut Vec::new()).is_err());
        let mut long = record(0, -1, 1);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_events(&long, &mut Vec::new()).is_err());
        // A trailing partial header is left unconsumed.
        let part = record(0, -1, 1);
        assert_eq!(parse_events(&part[..10], &mut Vec::new()).unwrap(), 0);
    }

    /// A `DFID_NAME` info record as the kernel lays it out.
    fn dfid_name(fsid: [i32; 2], kind: i32, handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid[0].to_ne_bytes());
        body.extend_from_slice(&fsid[1].to_ne_bytes());
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(handle);
        body.extend_from_slice(name);
        body.push(0);
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut rec = vec![INFO_DFID_NAME, 0];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    fn with_info(mask: u64, info: &[u8]) -> Vec<u8> {
        let mut r = record(mask, -1, 7);
        r[0..4].copy_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        r.extend_from_slice(info);
        r
    }

    #[test]
    fn a_dfid_name_record_gives_the_directory_and_the_name() {
        let info = dfid_name([3, 4], 1, &[9, 8, 7, 6, 5, 4, 3, 2], b"u\xffx");
        let buf = with_info(libc::FAN_CREATE, &info);
        let mut out = Vec::new();
        assert_eq!(parse_events(&buf, &mut out).unwrap(), buf.len());
        assert_eq!(out[0].fsid, Some([3, 4]));
        let e = out[0].dir_entry.as_ref().unwrap();
        assert_eq!(e.dir.fsid, [3, 4]);
        assert_eq!(e.dir.kind, 1);
        assert_eq!(e.dir.bytes, [9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(e.name.as_encoded_bytes(), b"u\xffx", "names are raw bytes");
    }

    #[test]
    fn broken_info_records_leave_the_event_without_an_entry() {
        let good = dfid_name([1, 2], 1, &[1; 8], b"x");
        // A handle longer than its record, a length past the end, a
        // record too short for a file id, an empty name: no entry, and
        // the events themselves stand.
        let mut long_handle = good.clone();
        long_handle[12..16].copy_from_slice(&4000u32.to_ne_bytes());
        let mut past_end = good.clone();
        past_end[2..4].copy_from_slice(&200u16.to_ne_bytes());
        let short = vec![INFO_DFID_NAME, 0, 8, 0, 1, 2, 3, 4];
        let no_name = dfid_name([1, 2], 1, &[1; 8], b"");
        for info in [long_handle, past_end, short, no_name] {
            let buf = with_info(libc::FAN_CREATE, &info);
            let mut out = Vec::new();
            assert_eq!(parse_events(&buf, &mut out).unwrap(), buf.len());
            assert_eq!(out.len(), 1);
            assert!(out[0].dir_entry.is_none(), "{info:?}");
        }
    }

    /// The handle we compute for a directory we mark is the one the
    /// kernel reports in that directory's create events (on the test
    /// machine's filesystem and on an overlay): the create loop finds the
    /// directory by it. Needs root (fanotify, mount).
    #[test]
    fn a_marked_directorys_handle_is_the_one_its_events_carry() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the unit tests as root"
            );
            return;
        }
        let tmp = crate::testdir::TempDir::new("handles");
        let plain = tmp.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let mut dirs = vec![plain.clone()];
        let merged = tmp.path().join("merged");
        for d in ["lower/sub", "upper", "work", "merged"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            tmp.path().join("lower").display(),
            tmp.path().join("upper").display(),
            tmp.path().join("work").display()
        );
        let mounted = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            // A lower directory seen through the overlay.
            dirs.push(merged.join("sub"));
        }
        let group = Group::create().expect("create group");
        for dir in &dirs {
            let fd = nix::fcntl::open(
                dir.as_path(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            group.mark_creates(fd.as_fd(), true, "test dir").unwrap();
            let want = handle_of(fd.as_fd()).unwrap();
            std::fs::create_dir(dir.join("new")).unwrap();
            assert!(group.wait(Duration::from_secs(5)).unwrap());
            let mut buf = vec![0u8; 4096];
            let n = group.read(&mut buf).unwrap();
            let mut out = Vec::new();
            parse_events(&buf[..n], &mut out).unwrap();
            let e = out[0].dir_entry.as_ref().expect("a DFID_NAME record");
            assert_eq!(e.dir, want, "{}", dir.display());
            assert_eq!(e.name, "new");
        }
        drop(group);
        if mounted {
            let _ = std::process::Command::new("umount").arg(&merged).status();
        }
    }
}
