//! Notice at once when a registered container's init exits, through one
//! pidfd per container, so the daemon drops the container without waiting
//! for a `poststop` hook.
//!
//! A pidfd becomes readable when its process exits. That makes `poststop`
//! optional: the shipped hooks.d file registers at `createRuntime` only,
//! and each container start spawns one `keyward` process instead of two.
//! The daemon's periodic liveness check stays as a fallback.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};

use crate::attribute::procfs;

/// One registered container's init, as the reaper needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub id: String,
    pub pid: i32,
    pub start_time_ticks: u64,
}

/// The pidfds of registered inits, by container id.
#[derive(Debug, Default)]
pub struct Exits {
    fds: HashMap<String, (Init, OwnedFd)>,
}

/// A pidfd for `pid`, if that process is alive and started at `start`
/// (a pid reused by another process is not ours).
fn pidfd_for(pid: i32, start: u64) -> Option<OwnedFd> {
    // A zombie init has exited already: nothing to wait for.
    procfs::pidfd_of(pid, start)
        .ok()
        .filter(|(_, s)| !s.exited())
        .map(|(fd, _)| fd)
}

impl Exits {
    /// Follow exactly the inits in `live` (a container registered again
    /// under the same id has a new init). Returns the inits already gone
    /// (they exited before we could open their pidfd).
    pub fn sync(&mut self, live: &[Init]) -> Vec<Init> {
        self.fds.retain(|_, (init, _)| live.contains(init));
        let mut gone = Vec::new();
        for init in live {
            if self.fds.contains_key(&init.id) {
                continue;
            }
            match pidfd_for(init.pid, init.start_time_ticks) {
                Some(fd) => {
                    self.fds.insert(init.id.clone(), (init.clone(), fd));
                }
                None => gone.push(init.clone()),
            }
        }
        gone
    }

    /// Wait up to `timeout` for inits to exit; returns them and stops
    /// following them.
    pub fn wait(&mut self, timeout: Duration) -> Vec<Init> {
        if self.fds.is_empty() {
            std::thread::sleep(timeout);
            return Vec::new();
        }
        let ids: Vec<&String> = self.fds.keys().collect();
        let mut polls: Vec<PollFd<'_>> = self
            .fds
            .values()
            .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let ts = nix::sys::time::TimeSpec::from_duration(timeout);
        if nix::poll::ppoll(&mut polls, Some(ts), None).unwrap_or(0) <= 0 {
            return Vec::new();
        }
        let exited: Vec<String> = polls
            .iter()
            .zip(ids)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, id)| id.clone())
            .collect();
        exited
            .iter()
            .filter_map(|id| self.fds.remove(id).map(|(init, _)| init))
            .collect()
    }

    /// How many inits are followed.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! Real child processes: a pidfd is kernel state, but needs no
    //! privilege for our own children.
    use super::*;
    use std::process::Command;

    fn init_of(child: &std::process::Child, id: &str) -> Init {
        let pid = child.id() as i32;
        Init {
            id: id.to_string(),
            pid,
            start_time_ticks: procfs::stat(pid).unwrap().start_time_ticks,
        }
    }

    #[test]
    fn an_exit_is_reported_once_and_a_live_init_is_not() {
        let mut short = Command::new("sleep").arg("0.2").spawn().unwrap();
        let mut long = Command::new("sleep").arg("30").spawn().unwrap();
        let mut exits = Exits::default();
        let live = [init_of(&short, "short"), init_of(&long, "long")];
        assert!(exits.sync(&live).is_empty());
        assert_eq!(exits.len(), 2);
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen.extend(exits.wait(Duration::from_millis(100)));
            if !seen.is_empty() {
                break;
            }
        }
        // Reaped only now, as a runtime would: the pidfd reported the exit
        // before that.
        let _ = short.wait();
        assert_eq!(seen, [live[0].clone()]);
        assert_eq!(exits.len(), 1);
        assert!(exits.wait(Duration::from_millis(50)).is_empty());
        long.kill().unwrap();
        let _ = long.wait();
    }

    #[test]
    fn a_dead_or_reused_pid_is_gone_at_sync() {
        let mut child = Command::new("true").spawn().unwrap();
        let init = init_of(&child, "c");
        child.wait().unwrap();
        let mut exits = Exits::default();
        assert_eq!(exits.sync(std::slice::from_ref(&init)), [init]);
        // Our own pid with another start time: a reused pid.
        let me = Init {
            id: "reused".into(),
            pid: std::process::id() as i32,
            start_time_ticks: 1,
        };
        assert_eq!(exits.sync(std::slice::from_ref(&me)), [me]);
        assert!(exits.is_empty());
    }
}
