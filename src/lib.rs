//! keyward: stop credential theft by archivers inside Linux containers.
//!
//! The library is the pipeline, one folder per stage, in the order data
//! flows (each folder's `mod.rs` says what the stage takes and hands on):
//!
//! * [`hook`]: the OCI hook registers each container before its first
//!   process runs;
//! * [`registry`]: the daemon verifies, enriches, marks and persists each
//!   registration, and drops a container when its init exits;
//! * [`watch`]: fanotify groups and marks on the container's credential
//!   files and exec, and the index from marked inode to container path;
//! * [`attribute`]: procfs reads, pid → container, executable classes and
//!   archiver identities;
//! * [`rules`]: the compiled rules and exceptions, one verdict per event;
//! * [`answer`]: the loops that answer the kernel first and queue findings;
//! * [`alert`]: findings aggregated per run, rate-limited, rendered as ECS
//!   and delivered to the JSON file and syslog;
//! * [`response`]: kill, stop and disconnect.
//!
//! [`config`] is read by every stage and imports none; [`daemon`] wires the
//! stages into threads, and [`upgrade`] hands its fanotify groups and
//! socket to the binary it re-execs; [`cli`] renders what the command line
//! prints for people.

pub mod alert;
pub mod answer;
pub mod attribute;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod hook;
pub mod registry;
pub mod response;
pub mod rules;
#[cfg(test)]
mod testdir;
pub mod upgrade;
pub mod watch;
