//! Response actions: kill the archiver, stop the container, cut its network.
//!
//! * `deny` is the fanotify answer itself (see [`crate::answer::permission`]).
//! * `kill` signals the opener through a pidfd, after checking that the
//!   pidfd's process has the start time we attributed, so a reused pid is
//!   never hit. It runs on the answering thread *before* the deny is
//!   written: the opener is still held inside `open(2)`, so it dies with
//!   SIGKILL (status 137) and never sees data or even the EPERM.
//! * `stop` SIGKILLs the container's init (pid + start time, via pidfd).
//!   When the init of a pid namespace dies the kernel kills every other
//!   process in it, so the whole container ends and the runtime sees it
//!   exit. Processes left in the same pid namespace (a container without its
//!   own pid namespace has none to lose) are then signalled one by one.
//! * `disconnect` takes every non-loopback interface in the container's
//!   network namespace down over rtnetlink ([`crate::response::netlink`]).

pub mod netlink;

use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};

use crate::attribute::procfs::{self, PidfdError};
use crate::config::Action;
use crate::watch::index::ContainerView;

/// How a response went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseResult {
    Ok,
    Failed,
    /// The action had nothing to act on (`deny` of a match made on exec
    /// arguments alone: there was no open to refuse).
    NotApplicable,
}

/// The response taken for a finding and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseOutcome {
    pub action: Action,
    pub result: ResponseResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Interfaces taken down by `disconnect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

impl ResponseOutcome {
    /// A response that failed for `reason`.
    pub fn failed(action: Action, reason: String) -> Self {
        Self {
            action,
            result: ResponseResult::Failed,
            reason: Some(reason),
            interfaces: Vec::new(),
        }
    }

    /// A response that succeeded, or had nothing to do (`alert`).
    pub fn ok(action: Action) -> Self {
        Self {
            action,
            result: ResponseResult::Ok,
            reason: None,
            interfaces: Vec::new(),
        }
    }
}

/// Errors carrying out a response.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error(transparent)]
    Process(#[from] PidfdError),
    #[error("cannot signal process {pid}: {source}")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] crate::response::netlink::NetlinkError),
}

/// SIGKILL `pid` if it is still the process that started at `start`.
pub fn kill_process(pid: i32, start: u64) -> Result<(), ResponseError> {
    let (pidfd, _) = procfs::pidfd_of(pid, start)?;
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number, no
    // siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(ResponseError::Signal {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Stop the whole container; returns how many processes were signalled.
pub fn stop_container(c: &ContainerView) -> Result<usize, ResponseError> {
    kill_process(c.init_pid, c.init_start)?;
    let mut n = 1;
    // Anything else still in the container's pid namespace (only possible
    // when the namespace is shared) gets the same.
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == c.init_pid || pid as u32 == std::process::id() {
                continue;
            }
            let same_ns = procfs::ns_inode(pid, "pid").ok() == Some(c.pid_ns)
                && procfs::ns_inode(pid, "mnt").ok() == Some(c.mnt_ns);
            let killed = same_ns
                && procfs::stat(pid).is_ok_and(|s| kill_process(pid, s.start_time_ticks).is_ok());
            if killed {
                n += 1;
            }
        }
    }
    Ok(n)
}

fn outcome(action: Action, r: Result<Vec<String>, ResponseError>) -> ResponseOutcome {
    match r {
        Ok(interfaces) => ResponseOutcome {
            interfaces,
            ..ResponseOutcome::ok(action)
        },
        Err(e) => ResponseOutcome::failed(action, e.to_string()),
    }
}

/// The outcome of the kill done on the answering thread.
pub fn kill_outcome(pid: i32, start: u64) -> ResponseOutcome {
    outcome(Action::Kill, kill_process(pid, start).map(|_| Vec::new()))
}

/// Carry out the container-wide actions (`stop`, `disconnect`), or report
/// what the answering thread already did (`alert`, `deny`, `kill`).
///
/// `denied` says whether an open of this run was refused; a match from
/// exec arguments alone has no open to deny, so `deny` is then reported as
/// not applicable while `kill`, `stop` and `disconnect` still act.
pub fn respond(
    c: &ContainerView,
    action: Action,
    pid: i32,
    start: u64,
    denied: bool,
) -> ResponseOutcome {
    match action {
        Action::Alert => outcome(action, Ok(Vec::new())),
        Action::Deny if denied => outcome(action, Ok(Vec::new())),
        Action::Deny => ResponseOutcome {
            action,
            result: ResponseResult::NotApplicable,
            reason: Some("matched on exec arguments; there was no open to deny".into()),
            interfaces: Vec::new(),
        },
        Action::Kill => kill_outcome(pid, start),
        Action::Stop => outcome(action, stop_container(c).map(|_| Vec::new())),
        Action::Disconnect => outcome(
            action,
            crate::response::netlink::disconnect(c.init_pid).map_err(ResponseError::from),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_refuses_a_reused_pid_and_reports_a_gone_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = procfs::stat(pid).unwrap().start_time_ticks;
        let e = kill_process(pid, start + 1).unwrap_err();
        assert!(
            matches!(e, ResponseError::Process(PidfdError::Reused { .. })),
            "{e}"
        );
        kill_process(pid, start).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(matches!(
            kill_process(pid, start),
            Err(ResponseError::Process(PidfdError::Gone { .. }))
        ));
    }

    #[test]
    fn deny_without_an_open_is_not_applicable() {
        let c = ContainerView {
            reference: Default::default(),
            action: Action::Deny,
            init_pid: 0,
            init_start: 0,
            pid_ns: 0,
            mnt_ns: 0,
            net_ns: 0,
            cgroup: None,
            annotations: Default::default(),
        };
        assert_eq!(
            respond(&c, Action::Deny, 0, 0, false).result,
            ResponseResult::NotApplicable
        );
        assert_eq!(
            respond(&c, Action::Deny, 0, 0, true).result,
            ResponseResult::Ok
        );
        assert_eq!(
            respond(&c, Action::Kill, i32::MAX, 0, true).result,
            ResponseResult::Failed
        );
    }
}
