//! Registry: which containers are watched.
//!
//! Takes a [`crate::hook::protocol::Registration`] from the control socket
//! and hands on a verified, persisted [`store::ContainerRecord`] whose
//! marks are in place, plus the [`crate::watch::index::ContainerView`] the
//! decision threads read.
//!
//! * [`control`]: the root-only unix socket, one JSON line each way;
//! * [`service`]: what the socket's requests do (register, deregister,
//!   status, containers) and the reload;
//! * [`register`]: the steps of a registration (verify, enrich, mark,
//!   persist), deregistration, rescans and restore after a restart;
//! * [`verify`]: the id, the pid (its start time and namespaces) and the
//!   response annotation;
//! * [`enrich`]: the name and image an engine keeps in its own metadata;
//! * [`store`]: the records and their persistence under the runtime
//!   directory;
//! * [`reaper`]: a pidfd per container init, so a container is dropped the
//!   moment it exits;
//! * [`metrics`]: the status report as Prometheus metrics over HTTP.

pub mod control;
pub mod enrich;
pub mod metrics;
pub mod reaper;
pub mod register;
pub mod service;
pub mod store;
pub mod verify;

/// Write one line of the daemon's log to stderr (the journal's, under
/// systemd) in a single `write`: `eprintln!` wrote the prefix, the message
/// and the newline apart, three syscalls on the registration's path, and
/// lines of two threads could interleave.
pub fn log_line(msg: &str) {
    use std::io::Write as _;
    let line = format!("keyward: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
