//! Attribution: pid → process facts read from procfs.
//!
//! A permission event holds its opener inside `open(2)`, so `/proc/<pid>`
//! is stable while we read it. Exec notifications are not held: the caller
//! checks `/proc/<pid>/exe` against the event's file before trusting argv
//! (see [`crate::watch::fanotify`]). Every read is bounded, argv included, so a
//! process with 100k arguments costs a fixed amount.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bytes of `/proc/<pid>/cmdline` we read at most.
///
/// Every argument is matched by the rules, so this is above Linux's usual
/// ARG_MAX (a quarter of an 8 MiB stack): a credential path placed after
/// 100k filler arguments is still seen. Past it, `args_truncated` is set.
pub const MAX_CMDLINE_BYTES: usize = 8 * 1024 * 1024;
/// Arguments an alert lists at most; `args_count` still counts them all.
pub const MAX_ARGS: usize = 1024;

/// Errors reading a process.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("process {pid} vanished before it could be attributed")]
    Vanished { pid: i32 },
    #[error("cannot read /proc/{pid}/{what}: {source}")]
    Read {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed /proc/{pid}/stat")]
    BadStat { pid: i32 },
}

/// The parent, in less detail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentInfo {
    pub pid: i32,
    pub name: String,
    pub exe: String,
    pub args: Vec<String>,
}

/// What an alert says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    /// Start time in clock ticks since boot: with the pid, a unique key.
    pub start_time_ticks: u64,
    /// Basename of the executable (ECS `process.name`).
    pub name: String,
    pub exe: String,
    /// argv, lossily decoded; bounded by [`MAX_ARGS`].
    pub args: Vec<String>,
    pub args_count: usize,
    /// argv was longer than [`MAX_CMDLINE_BYTES`] and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_truncated: bool,
    pub cwd: String,
    pub ppid: i32,
    pub uid: Option<u32>,
    pub parent: Option<ParentInfo>,
}

/// Start time and parent pid from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Run state letter: `Z` (zombie) and `X` (dead) have no image left.
    pub state: u8,
    pub ppid: i32,
    pub start_time_ticks: u64,
    /// Address of argv in the process's memory. A new image gets a new one
    /// (and a forked child shares its parent's until it execs).
    pub arg_start: u64,
    /// End of argv, and the bounds of the environment: with `arg_start`,
    /// they identify one exec of the process.
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// Clock ticks a second (`CLK_TCK`), the unit of `start_time_ticks`;
/// `None` if the system does not say.
pub fn clk_tck() -> Option<u64> {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = *HZ.get_or_init(|| unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(0) as u64);
    (hz > 0).then_some(hz)
}

/// The clock `start_time_ticks` counts, now: ticks (`CLK_TCK`) of
/// `CLOCK_BOOTTIME`. A process whose start is later than an instant read
/// here did not exist at that instant.
pub fn boot_ticks_now() -> Option<u64> {
    let hz = clk_tck()?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ns =
        u64::try_from(now.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(now.tv_nsec()).ok()?;
    Some(ns / (1_000_000_000 / hz))
}

impl Stat {
    /// Identifies one image of one process: pid and start time name the
    /// process (a reused pid has another start time), the argv and
    /// environment addresses change with an exec, and `exe` (the
    /// executable's dev and inode) changes with an exec of another file.
    /// The addresses alone are not enough: with address randomisation off
    /// (`setarch -R`, which a container may do) an exec of tar can land
    /// its argv where the benign image's was.
    pub fn image_key(&self, pid: i32, exe: (u64, u64)) -> ImageKey {
        ImageKey {
            pid,
            start: self.start_time_ticks,
            args: (self.arg_start, self.arg_end, self.env_start, self.env_end),
            exe,
        }
    }
}

/// See [`Stat::image_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub pid: i32,
    pub start: u64,
    pub args: (u64, u64, u64, u64),
    pub exe: (u64, u64),
}

fn io_err(pid: i32, what: &'static str, source: std::io::Error) -> AttributionError {
    if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
        AttributionError::Vanished { pid }
    } else {
        AttributionError::Read { pid, what, source }
    }
}

/// Parse `/proc/<pid>/stat`. The comm field may hold spaces and `)`, so
/// fields are counted from the *last* `)`.
pub fn parse_stat(pid: i32, text: &[u8]) -> Result<Stat, AttributionError> {
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(AttributionError::BadStat { pid })?;
    let rest =
        std::str::from_utf8(&text[close + 1..]).map_err(|_| AttributionError::BadStat { pid })?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After comm: state(0) ppid(1) ... starttime is field 22 overall, i.e.
    // index 19 here.
    let ppid = fields.get(1).and_then(|s| s.parse().ok());
    let start = fields.get(19).and_then(|s| s.parse().ok());
    // arg_start is field 48 (index 45 here); old kernels lack it.
    let field = |i: usize| fields.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
    let arg_start = field(45);
    match (ppid, start) {
        (Some(ppid), Some(start_time_ticks)) => Ok(Stat {
            state: fields
                .first()
                .and_then(|s| s.bytes().next())
                .unwrap_or(b'?'),
            ppid,
            start_time_ticks,
            arg_start,
            arg_end: field(46),
            env_start: field(47),
            env_end: field(48),
        }),
        _ => Err(AttributionError::BadStat { pid }),
    }
}

/// Read a small `/proc` file whole: open, reads of 4 KiB, close. `fs::read`
/// sizes its buffer by `statx`, which says 0 for these files, and then
/// grows it from 32 bytes: a `stat` took six reads.
pub fn read_small(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 {
            return Ok(out);
        }
    }
}

/// The system call a blocked process is in and its six arguments, from
/// the text of `/proc/<pid>/syscall` (`257 0xffffff9c 0x7ffd... 0x241 ...`);
/// `None` when it is in none (`running`, or `-1 ...`) or the text is not
/// that.
pub fn parse_syscall(text: &[u8]) -> Option<(i64, [u64; 6])> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

/// Whether the open that `pid` is held in (during its permission event)
/// asks only to write: `O_WRONLY` through `open` or `openat` (their flags
/// are the registers saved at the call, which the process cannot change
/// any more), or `creat`. `None` when that cannot be told (`openat2`,
/// another call such as an io_uring submission, a process not in a
/// call); callers then take the open as a read. fanotify's open event says nothing of the mode,
/// and a shell that writes `authorized_keys` has not read a key.
pub fn open_writes_only(pid: i32) -> Option<bool> {
    let text = read_small(&format!("/proc/{pid}/syscall")).ok()?;
    let (nr, args) = parse_syscall(&text)?;
    let flags = match nr {
        libc::SYS_creat => return Some(true),
        libc::SYS_open => args[1],
        libc::SYS_openat => args[2],
        // openat2's flags are in the opener's memory, which another of
        // its threads may rewrite after the kernel copied them: a read
        // dressed up as a write must not escape following. Its opens
        // count as reads.
        _ => return None,
    };
    Some(flags & libc::O_ACCMODE as u64 == libc::O_WRONLY as u64)
}

/// Read `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Result<Stat, AttributionError> {
    let text = read_small(&format!("/proc/{pid}/stat")).map_err(|e| io_err(pid, "stat", e))?;
    parse_stat(pid, &text)
}

impl Stat {
    /// Whether the process has exited (a zombie or dead): its `exe` and
    /// argv are gone.
    pub fn exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }
}

/// A pidfd for `pid` (pidfd_open(2)): it pins that one process, so a
/// caller can check the process's start time and then act on it without
/// racing pid reuse.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Why [`pidfd_of`] found no pidfd.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("process {pid} is gone")]
    Gone { pid: i32 },
    #[error("pid {pid} now belongs to another process (start time changed)")]
    Reused { pid: i32 },
    #[error("cannot open a pidfd for process {pid}: {source}")]
    Open {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A pidfd for `pid` if that pid is still the process that started at
/// `start`: the pidfd pins one process first, then its start time says
/// whether it is ours, so a reused pid is never acted on. The one check
/// behind `kill`, `stop` and the reaper.
pub fn pidfd_of(pid: i32, start: u64) -> Result<(std::os::fd::OwnedFd, Stat), PidfdError> {
    let fd = pidfd_open(pid).map_err(|source| {
        if source.raw_os_error() == Some(libc::ESRCH) {
            PidfdError::Gone { pid }
        } else {
            PidfdError::Open { pid, source }
        }
    })?;
    match stat(pid) {
        Ok(s) if s.start_time_ticks == start => Ok((fd, s)),
        Ok(_) => Err(PidfdError::Reused { pid }),
        Err(_) => Err(PidfdError::Gone { pid }),
    }
}

/// One entry of a process's fd table: its number and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    pub fd: std::ffi::OsString,
    pub id: crate::watch::resolve::FileId,
    pub is_file: bool,
    /// A pipe or FIFO.
    pub is_fifo: bool,
}

/// Which end of a pipe or FIFO an fd holds, from its access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    Read,
    Write,
    /// A FIFO opened `O_RDWR`.
    Both,
}

impl PipeEnd {
    pub fn reads(self) -> bool {
        self != PipeEnd::Write
    }
    pub fn writes(self) -> bool {
        self != PipeEnd::Read
    }
}

/// A pipe or FIFO in a process's fd table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeFd {
    pub fd: std::ffi::OsString,
    pub id: crate::watch::resolve::FileId,
    pub end: PipeEnd,
}

/// The pipes and FIFOs among the first `max` entries of `pid`'s fd table,
/// with the end each fd holds. The end is the fd's access mode in
/// `/proc/<pid>/fdinfo/<fd>` (`flags:` in octal): a pipe's read end is
/// `O_RDONLY`, its write end `O_WRONLY`. Empty when the process is gone.
///
/// An fd that closes while the table is read makes it read once more: a
/// pipeline member just forked moves its pipe onto its stdin
/// (`dup2(pipe, 0); close(pipe)`), and a read between the two steps would
/// see the old stdin at 0 and no pipe at all.
pub fn pipes(pid: i32, max: usize) -> Vec<PipeFd> {
    let (first, changed) = pipes_once(pid, max);
    if changed {
        pipes_once(pid, max).0
    } else {
        first
    }
}

/// [`pipes`], read once, and whether an fd listed closed meanwhile.
fn pipes_once(pid: i32, max: usize) -> (Vec<PipeFd>, bool) {
    let (files, mut changed) = open_files_noting_closed(pid, max);
    let pipes = files
        .into_iter()
        .filter(|f| f.is_fifo)
        .filter_map(|f| {
            let Ok(info) = read_small(&format!("/proc/{pid}/fdinfo/{}", f.fd.to_string_lossy()))
            else {
                changed = true;
                return None;
            };
            Some(PipeFd {
                end: pipe_end(&info)?,
                fd: f.fd,
                id: f.id,
            })
        })
        .collect();
    (pipes, changed)
}

/// The end an fdinfo text's (`/proc/<pid>/fdinfo/<fd>`) `flags:` line
/// says the fd holds: its access mode, the flags being octal. `None` when
/// the text has no readable `flags:` line. Public so the fuzz targets
/// reach it.
pub fn pipe_end(fdinfo: &[u8]) -> Option<PipeEnd> {
    let text = std::str::from_utf8(fdinfo).ok()?;
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())?;
    match flags & libc::O_ACCMODE as u32 {
        0 => Some(PipeEnd::Read),
        1 => Some(PipeEnd::Write),
        _ => Some(PipeEnd::Both),
    }
}

/// Most `/proc` entries looked at by [`members`].
const MAX_SCAN: usize = 65_536;

/// The processes in a container's namespaces: those in pid namespace
/// `pid_ns`, or, when the container shares the host's pid namespace
/// (`pid_ns` is ours), those in mount namespace `mnt_ns`. One `/proc`
/// readdir and one `ns/` stat per process; a process that made its own
/// namespaces inside the container is not listed.
pub fn members(pid_ns: u64, mnt_ns: u64) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .take(MAX_SCAN)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_member(*pid, pid_ns, mnt_ns))
        .collect()
}

/// Whether `pid` is one of [`members`]`(pid_ns, mnt_ns)`: one `ns/` stat.
pub fn is_member(pid: i32, pid_ns: u64, mnt_ns: u64) -> bool {
    let own = fixed_ns(false, "pid").unwrap_or(0);
    let (ns, want) = if pid_ns != 0 && pid_ns != own {
        ("pid", pid_ns)
    } else {
        ("mnt", mnt_ns)
    };
    ns_inode(pid, ns).is_ok_and(|i| i == want)
}

/// Threads of a process whose children [`children`] reads, and how much
/// of each thread's list (about 500 pids).
const MAX_CHILD_TASKS: usize = 8;
const CHILDREN_BYTES: usize = 4096;

/// Children of process `pid`, as the kernel lists them per thread that
/// forked them (`/proc/<pid>/task/<tid>/children`): the first
/// [`CHILDREN_BYTES`] of each of the first [`MAX_CHILD_TASKS`] threads'
/// lists. Empty where the kernel lacks `CONFIG_PROC_CHILDREN` or the
/// process is gone.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten().take(MAX_CHILD_TASKS) {
        let Ok(f) = fs::File::open(t.path().join("children")) else {
            continue;
        };
        let mut buf = Vec::with_capacity(CHILDREN_BYTES);
        if f.take(CHILDREN_BYTES as u64).read_to_end(&mut buf).is_err() {
            continue;
        }
        // A list cut short may end in half a pid: drop the last word then.
        let text = String::from_utf8_lossy(&buf);
        let mut words: Vec<&str> = text.split_ascii_whitespace().collect();
        if buf.len() == CHILDREN_BYTES && !text.ends_with(' ') {
            words.pop();
        }
        out.extend(words.iter().filter_map(|w| w.parse::<i32>().ok()));
    }
    out
}

/// The first `max` entries of `/proc/<pid>/fd`, each stat'ed through its
/// magic link (which opens nothing). Empty when the process is gone.
pub fn open_files(pid: i32, max: usize) -> Vec<OpenFile> {
    open_files_noting_closed(pid, max).0
}

/// [`open_files`], and whether an fd listed closed before it was stat'ed.
fn open_files_noting_closed(pid: i32, max: usize) -> (Vec<OpenFile>, bool) {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (Vec::new(), false);
    };
    let mut closed = false;
    let files = dir
        .flatten()
        .take(max)
        .filter_map(|e| {
            let Ok(meta) = fs::metadata(e.path()) else {
                closed = true;
                return None;
            };
            Some(OpenFile {
                fd: e.file_name(),
                id: crate::watch::resolve::FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
                is_file: meta.is_file(),
                is_fifo: meta.file_type().is_fifo(),
            })
        })
        .collect();
    (files, closed)
}

/// Set the calling thread's nice value (Linux nice is per thread); false
/// if the kernel refused (raising it needs `CAP_SYS_NICE`).
pub fn set_thread_nice(nice: i32) -> bool {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // a failure leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0
    }
}

/// Put the calling thread under `SCHED_RR` at `priority` (reset to the
/// normal policy in any child it forks); false if the kernel refused (no
/// `CAP_SYS_NICE`, `RLIMIT_RTPRIO`, or a cgroup without real-time time).
pub fn set_thread_realtime(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param that outlives the call; the
    // tid is the caller's own. A failure changes nothing.
    unsafe {
        let tid = libc::gettid();
        libc::sched_setscheduler(tid, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) == 0
    }
}

/// Read `/proc/<pid>/stat` through a file opened once, with one `pread`
/// per call: the exec loop probes the same process many times, and
/// `fs::read` would cost an open, a `statx`, two reads and a close each
/// time. seq_file regenerates the text for every read at offset 0.
pub fn stat_at(pid: i32, file: &mut Option<fs::File>) -> Result<(Stat, Comm), AttributionError> {
    use std::os::unix::fs::FileExt;
    if file.is_none() {
        *file =
            Some(fs::File::open(format!("/proc/{pid}/stat")).map_err(|e| io_err(pid, "stat", e))?);
    }
    let Some(f) = file.as_ref() else {
        return Err(AttributionError::Vanished { pid });
    };
    let mut buf = [0u8; 2048];
    let n = f.read_at(&mut buf, 0).map_err(|e| io_err(pid, "stat", e))?;
    if n == 0 {
        return Err(AttributionError::Vanished { pid });
    }
    let text = &buf[..n];
    Ok((parse_stat(pid, text)?, Comm::of_stat(text)))
}

/// The `comm` field of a `/proc/<pid>/stat` text, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Comm {
    buf: [u8; 64],
    len: usize,
}

impl Comm {
    /// Between the first `(` and the last `)`; empty if malformed.
    pub fn of_stat(text: &[u8]) -> Self {
        let mut c = Self {
            buf: [0; 64],
            len: 0,
        };
        let open = text.iter().position(|&b| b == b'(');
        let close = text.iter().rposition(|&b| b == b')');
        if let (Some(o), Some(e)) = (open, close)
            && o < e
        {
            let name = &text[o + 1..e];
            c.len = name.len().min(c.buf.len());
            c.buf[..c.len].copy_from_slice(&name[..c.len]);
        }
        c
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Split a NUL-separated cmdline into every argument.
pub fn parse_cmdline(raw: &[u8]) -> Vec<OsString> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|part| std::ffi::OsStr::from_bytes(part).to_os_string())
        .collect()
}

/// Read argv as raw bytes, bounded by [`MAX_CMDLINE_BYTES`]; the flag
/// says whether it was cut.
pub fn cmdline(pid: i32) -> Result<(Vec<OsString>, bool), AttributionError> {
    let f =
        fs::File::open(format!("/proc/{pid}/cmdline")).map_err(|e| io_err(pid, "cmdline", e))?;
    let mut buf = Vec::with_capacity(4096);
    f.take(MAX_CMDLINE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_err(pid, "cmdline", e))?;
    let truncated = buf.len() > MAX_CMDLINE_BYTES;
    buf.truncate(MAX_CMDLINE_BYTES);
    Ok((parse_cmdline(&buf), truncated))
}

/// `/proc/<pid>/exe` as a path (may end in " (deleted)").
pub fn exe(pid: i32) -> Result<PathBuf, AttributionError> {
    fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| io_err(pid, "exe", e))
}

/// (dev, ino) of `/proc/<pid>/exe`, the file the process is running.
pub fn exe_id(pid: i32) -> Result<(u64, u64), AttributionError> {
    let m = fs::metadata(format!("/proc/{pid}/exe")).map_err(|e| io_err(pid, "exe", e))?;
    Ok((m.dev(), m.ino()))
}

/// Inode of one of the process's namespaces (`pid`, `mnt`, `net`, ...).
pub fn ns_inode(pid: i32, ns: &'static str) -> Result<u64, AttributionError> {
    let path = format!("/proc/{pid}/ns/{ns}");
    let m = fs::metadata(path).map_err(|e| io_err(pid, "ns", e))?;
    Ok(m.ino())
}

/// A namespace of the daemon's own (`pid` `None`) or of pid 1 (the host's),
/// read once: neither changes while the daemon runs, and registrations and
/// control-socket peers are checked against them each time. `None` when it
/// cannot be read (pid 1's namespaces are hidden in some sandboxes).
pub fn fixed_ns(init: bool, ns: &'static str) -> Option<u64> {
    type Slot = std::sync::OnceLock<Option<u64>>;
    static OWN: [Slot; 3] = [Slot::new(), Slot::new(), Slot::new()];
    static INIT: [Slot; 3] = [Slot::new(), Slot::new(), Slot::new()];
    let i = ["pid", "mnt", "net"].iter().position(|k| *k == ns)?;
    let (slots, pid) = if init {
        (&INIT, 1)
    } else {
        (&OWN, std::process::id() as i32)
    };
    *slots[i].get_or_init(|| ns_inode(pid, ns).ok())
}

/// The cgroups of pid 1 and of the daemon, as at most a few seconds ago:
/// every registration compares the container's with them, and they change
/// seldom if ever.
pub fn host_cgroups() -> Vec<CgroupLine> {
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, Vec<CgroupLine>)>> =
        std::sync::Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, lines)) = c.as_ref()
        && at.elapsed() < std::time::Duration::from_secs(5)
    {
        return lines.clone();
    }
    let lines: Vec<CgroupLine> = [1, std::process::id() as i32]
        .into_iter()
        .filter_map(|p| cgroups(p).ok())
        .flatten()
        .collect();
    *c = Some((std::time::Instant::now(), lines.clone()));
    lines
}

/// One line of `/proc/<pid>/cgroup`: the hierarchy (`0:` for the unified
/// one, `4:memory` for a v1 controller) and the cgroup's path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: String,
    pub path: String,
}

impl CgroupLine {
    /// The line as one key, `hierarchy:path` (as `/proc` prints it).
    pub fn key(&self) -> String {
        format!("{}:{}", self.hierarchy, self.path)
    }

    /// The keys of this cgroup and each cgroup above it, deepest first,
    /// the root (`/`) left out: a process in a cgroup a container made
    /// below its own still finds the container's.
    pub fn keys_up(&self) -> impl Iterator<Item = String> + '_ {
        let mut path = Some(self.path.as_str());
        std::iter::from_fn(move || {
            let p = path.filter(|p| p.len() > 1 && p.starts_with('/'))?;
            path = p.rfind('/').map(|i| &p[..i.max(1)]);
            Some(format!("{}:{}", self.hierarchy, p))
        })
    }
}

/// Parse `/proc/<pid>/cgroup` text; lines that are not
/// `id:controllers:path` are skipped.
pub fn parse_cgroups(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (id, controllers, path) = (it.next()?, it.next()?, it.next()?);
            (!id.is_empty() && path.starts_with('/')).then(|| CgroupLine {
                hierarchy: format!("{id}:{controllers}"),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroups `pid` is in, as the daemon's cgroup namespace names them.
/// The kernel records them: nothing a process does inside its container
/// (new namespaces, any number of parents) moves it out of its cgroup.
pub fn cgroups(pid: i32) -> Result<Vec<CgroupLine>, AttributionError> {
    let text = read_small(&format!("/proc/{pid}/cgroup"))
        .and_then(|t| String::from_utf8(t).map_err(std::io::Error::other))
        .map_err(|e| io_err(pid, "cgroup", e))?;
    Ok(parse_cgroups(&text))
}

/// Levels of pid namespace nesting the kernel allows (`MAX_PID_NS_LEVEL`).
const MAX_PID_NS_LEVEL: usize = 32;

/// The inode of `pid`'s pid namespace and of each namespace above it, up
/// to the daemon's (which is not listed). The kernel bounds the nesting at
/// 32 levels, so however many namespaces and parents a process makes
/// inside a container, the container's namespace is in this list.
pub fn pid_ns_chain(pid: i32) -> Vec<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut out = Vec::new();
    let Ok(f) = fs::File::open(format!("/proc/{pid}/ns/pid")) else {
        return out;
    };
    let mut cur = OwnedFd::from(f);
    for _ in 0..MAX_PID_NS_LEVEL {
        let Ok(st) = nix::sys::stat::fstat(&cur) else {
            break;
        };
        out.push(st.st_ino);
        // SAFETY: NS_GET_PARENT takes no argument and returns a new fd (or
        // -1, with EPERM once the parent is outside the daemon's own
        // namespace); `cur` is an open namespace fd we own.
        let parent = unsafe { libc::ioctl(cur.as_raw_fd(), libc::NS_GET_PARENT) };
        if parent < 0 {
            break;
        }
        // SAFETY: the kernel just returned `parent` as a new fd, owned by
        // nobody else.
        cur = unsafe { OwnedFd::from_raw_fd(parent) };
    }
    out
}

/// The working directory as the process sees it (inside its own root).
pub fn cwd(pid: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"))
}

/// Real uid from `/proc/<pid>/status` (via the `procfs` crate; only for
/// findings, never on the hot path of allowed opens).
fn uid(pid: i32) -> Option<u32> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.ruid)
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn name_of(exe: &std::path::Path) -> String {
    let s = exe.as_os_str().as_bytes();
    let s = s.strip_suffix(b" (deleted)").unwrap_or(s);
    String::from_utf8_lossy(crate::rules::basename(s)).into_owned()
}

/// Raw facts needed by the rules, before lossy decoding.
#[derive(Debug, Clone)]
pub struct RawProcess {
    pub pid: i32,
    pub stat: Stat,
    pub exe: PathBuf,
    /// The kernel's `comm`: basename of the path given to execve (so a
    /// busybox applet run as `/bin/tar` is "tar"), at most 15 bytes.
    pub comm: OsString,
    /// Every argument (up to [`MAX_CMDLINE_BYTES`]).
    pub args: Vec<OsString>,
    pub args_truncated: bool,
}

impl RawProcess {
    /// Read the facts the rules need.
    pub fn read(pid: i32) -> Result<Self, AttributionError> {
        Self::read_with(pid, stat(pid)?)
    }

    /// [`RawProcess::read`] for a caller that has just read the stat.
    pub fn read_with(pid: i32, stat: Stat) -> Result<Self, AttributionError> {
        let exe = exe(pid)?;
        let (args, args_truncated) = cmdline(pid)?;
        let mut comm =
            read_small(&format!("/proc/{pid}/comm")).map_err(|e| io_err(pid, "comm", e))?;
        if comm.last() == Some(&b'\n') {
            comm.pop();
        }
        Ok(Self {
            pid,
            stat,
            exe,
            comm: std::ffi::OsStr::from_bytes(&comm).to_os_string(),
            args,
            args_truncated,
        })
    }

    /// Basename of the executable, raw.
    pub fn exe_name(&self) -> &std::ffi::OsStr {
        let s = self.exe.as_os_str().as_bytes();
        let s = s.strip_suffix(b" (deleted)").unwrap_or(s);
        std::ffi::OsStr::from_bytes(crate::rules::basename(s))
    }

    /// ECS `process.name`: the executable's basename, except for a
    /// multi-call binary (busybox, toybox), where it is the applet that
    /// ran (`tar`, not `busybox`), with the binary in
    /// `process.executable`. The applet is the kernel's `comm` (a forked
    /// NOEXEC applet has the shell's argv but its own `comm`), unless
    /// `comm` names the binary itself: then argv\[0\], or argv\[1\] after
    /// `busybox`. busybox sh runs applets by exec'ing `/proc/self/exe`,
    /// which makes `comm` "exe".
    pub fn ecs_name(&self) -> String {
        use std::os::unix::ffi::OsStrExt;
        let exe_name = self.exe_name();
        if !crate::rules::is_multicall(exe_name.as_bytes()) {
            return name_of(&self.exe);
        }
        let own = |n: &[u8]| n.is_empty() || n == b"exe" || crate::rules::is_multicall(n);
        let comm = self.comm.as_bytes();
        if !own(comm) {
            return self.comm.to_string_lossy().into_owned();
        }
        let base = |a: &OsString| {
            std::ffi::OsStr::from_bytes(crate::rules::basename(a.as_bytes()))
                .to_string_lossy()
                .into_owned()
        };
        match self.args.first() {
            Some(a0) if !own(crate::rules::basename(a0.as_bytes())) => base(a0),
            Some(_) => self
                .args
                .get(1)
                .filter(|a1| !a1.as_bytes().starts_with(b"-"))
                .map(base)
                .unwrap_or_else(|| name_of(&self.exe)),
            None => name_of(&self.exe),
        }
    }

    /// Complete into a [`ProcessInfo`] with parent and cwd, best effort:
    /// a parent that has gone is simply absent.
    pub fn complete(self) -> ProcessInfo {
        let pid = self.pid;
        let parent = if self.stat.ppid > 0 {
            parent_info(self.stat.ppid)
        } else {
            None
        };
        ProcessInfo {
            pid,
            start_time_ticks: self.stat.start_time_ticks,
            name: self.ecs_name(),
            exe: self.exe.to_string_lossy().into_owned(),
            args: lossy(&self.args[..self.args.len().min(MAX_ARGS)]),
            args_count: self.args.len(),
            args_truncated: self.args_truncated,
            cwd: cwd(pid).to_string_lossy().into_owned(),
            ppid: self.stat.ppid,
            uid: uid(pid),
            parent,
        }
    }
}

fn parent_info(pid: i32) -> Option<ParentInfo> {
    let exe = exe(pid).ok()?;
    let (args, _) = cmdline(pid).unwrap_or_default();
    Some(ParentInfo {
        pid,
        name: name_of(&exe),
        exe: exe.to_string_lossy().into_owned(),
        args: lossy(&args[..args.len().min(64)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multicall_applet_is_named_by_comm() {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(busybox) = busybox else {
            // .ci/deps installs busybox-static; under CI its absence fails.
            assert!(std::env::var_os("CI").is_none(), "busybox is not installed");
            return;
        };
        let dir = crate::testdir::TempDir::new("applet");
        let link = dir.path().join("sleep");
        std::os::unix::fs::symlink(busybox, &link).unwrap();
        let mut child = std::process::Command::new(&link).arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        let mut p = RawProcess::read(pid).unwrap();
        for _ in 0..200 {
            if p.exe_name() == "busybox" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            p = RawProcess::read(pid).unwrap();
        }
        let name = p.ecs_name();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(name, "sleep", "the applet, not busybox");
        // Run through /proc/self/exe (comm "exe"), or as `busybox tar`.
        let mut via = RawProcess::read(std::process::id() as i32).unwrap();
        via.exe = PathBuf::from(busybox);
        via.comm = "exe".into();
        via.args = vec!["sleep".into(), "1".into()];
        assert_eq!(via.ecs_name(), "sleep");
        via.comm = "busybox".into();
        via.args = vec!["busybox".into(), "tar".into(), "cf".into()];
        assert_eq!(via.ecs_name(), "tar");
        via.args = vec!["busybox".into(), "--list".into()];
        assert_eq!(via.ecs_name(), "busybox");
        let me = RawProcess::read(std::process::id() as i32).unwrap();
        assert_eq!(
            me.ecs_name(),
            name_of(&me.exe),
            "others by their executable"
        );
    }

    #[test]
    fn cgroup_lines_and_the_cgroups_above_them() {
        let lines = parse_cgroups(
            "12:pids:/cgx1\n4:memory:/process_api/6299/cgx1\n0::/cgx1/inner\ngarbage\n1:cpu:relative\n",
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0].key(), "12:pids:/cgx1");
        assert_eq!(
            lines[2].keys_up().collect::<Vec<_>>(),
            ["0::/cgx1/inner", "0::/cgx1"],
            "the root is never a key"
        );
        let root = CgroupLine {
            hierarchy: "0:".into(),
            path: "/".into(),
        };
        assert_eq!(root.keys_up().count(), 0);
        assert!(!cgroups(std::process::id() as i32).unwrap().is_empty());
    }

    #[test]
    fn our_pid_namespace_chain_starts_with_our_own() {
        let me = std::process::id() as i32;
        let chain = pid_ns_chain(me);
        assert_eq!(chain.first().copied(), Some(ns_inode(me, "pid").unwrap()));
        assert!(pid_ns_chain(i32::MAX).is_empty(), "a vanished pid has none");
    }

    #[test]
    fn stat_parses_comm_with_spaces_and_parens() {
        let line = b"123 (a) b) c) S 7 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(123, line).unwrap();
        assert_eq!(s.ppid, 7);
        assert_eq!(s.start_time_ticks, 98765);
        assert_eq!(s.arg_start, 0);
        let me = stat(std::process::id() as i32).unwrap();
        assert!(me.arg_start > 0);
    }

    #[test]
    fn pipe_ends_come_from_the_fd_access_mode() {
        assert_eq!(
            pipe_end(b"pos:\t0\nflags:\t02000000\n"),
            Some(PipeEnd::Read)
        );
        assert_eq!(
            pipe_end(b"pos:\t0\nflags:\t02000001\n"),
            Some(PipeEnd::Write)
        );
        assert_eq!(pipe_end(b"flags:\t0100002\n"), Some(PipeEnd::Both));
        assert_eq!(pipe_end(b"flags:\tzz\n"), None);
        assert_eq!(pipe_end(b"\xff\xfe"), None);
        // A real pipe of this process: each end where it is.
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let ends = pipes(me, 4096);
        let end_of = |fd: i32| {
            ends.iter()
                .find(|p| p.fd == std::ffi::OsString::from(fd.to_string()))
                .map(|p| p.end)
        };
        assert_eq!(end_of(r.as_raw_fd()), Some(PipeEnd::Read));
        assert_eq!(end_of(w.as_raw_fd()), Some(PipeEnd::Write));
        let ids: Vec<_> = ends
            .iter()
            .filter(|p| {
                [r.as_raw_fd(), w.as_raw_fd()]
                    .map(|f| f.to_string())
                    .contains(&p.fd.to_string_lossy().into_owned())
            })
            .map(|p| p.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "both ends are one inode");
    }

    #[test]
    fn an_exec_of_another_file_is_another_image_even_at_the_same_addresses() {
        let me = stat(std::process::id() as i32).unwrap();
        let a = me.image_key(7, (1, 100));
        assert_eq!(a, me.image_key(7, (1, 100)));
        // Same pid, start time and argv addresses (randomisation off), a
        // different executable: not the image the cache judged.
        assert_ne!(a, me.image_key(7, (1, 101)));
        assert_ne!(a, me.image_key(7, (2, 100)));
    }

    #[test]
    fn stat_garbage_is_an_error_naming_the_pid() {
        let e = parse_stat(9, b"garbage").unwrap_err().to_string();
        assert!(e.contains("/proc/9/stat"), "{e}");
        assert!(parse_stat(9, b"1 (x) S").is_err());
    }

    #[test]
    fn cmdline_keeps_every_argument_as_raw_bytes() {
        let mut raw = Vec::new();
        for i in 0..100_000 {
            raw.extend_from_slice(format!("a{i}").as_bytes());
            raw.push(0);
        }
        let args = parse_cmdline(&raw);
        assert_eq!(args.len(), 100_000);
        assert_eq!(args[99_999].as_bytes(), b"a99999");
        let args = parse_cmdline(b"tar\0\xff\xfe\0");
        assert_eq!(args.len(), 2);
        assert_eq!(args[1].as_bytes(), b"\xff\xfe");
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let p = RawProcess::read(me).unwrap().complete();
        assert_eq!(p.pid, me);
        assert!(p.start_time_ticks > 0);
        assert!(!p.args.is_empty());
        assert!(p.parent.is_some());
    }

    #[test]
    fn vanished_pid_is_reported_as_such() {
        // Pid numbers above pid_max never exist.
        let e = RawProcess::read(i32::MAX).unwrap_err();
        assert!(
            matches!(e, AttributionError::Vanished { pid } if pid == i32::MAX),
            "{e}"
        );
    }

    #[test]
    fn a_blocked_open_says_its_mode() {
        let (nr, args) =
            parse_syscall(b"257 0xffffff9c 0x7ffd2b3c 0x241 0x1b6 0x0 0x0 0x7ffd2b00 0x7f12aa\n")
                .unwrap();
        assert_eq!(nr, 257);
        assert_eq!(args[2], 0x241, "O_WRONLY|O_CREAT|O_TRUNC");
        assert!(parse_syscall(b"running\n").is_none());
        assert!(parse_syscall(b"-1 0x7ffd 0x7f12\n").is_none());
        assert!(parse_syscall(b"257 0x1 zz").is_none());
        // A live process not in an open: unknown, so taken as a read.
        assert_eq!(open_writes_only(std::process::id() as i32), None);
    }

    #[test]
    fn children_lists_a_process_children_and_nothing_for_a_gone_one() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut kids = children(pid);
        while kids.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            kids = children(pid);
        }
        let parents: Vec<i32> = kids
            .iter()
            .filter_map(|k| stat(*k).ok())
            .map(|s| s.ppid)
            .collect();
        for k in &kids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*k),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        sh.kill().unwrap();
        sh.wait().unwrap();
        assert_eq!(kids.len(), 2, "{kids:?}");
        assert_eq!(parents, vec![pid, pid]);
        assert!(children(i32::MAX).is_empty());
    }
}
