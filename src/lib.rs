//! keyward: stop credential theft by archivers inside Linux containers.
//!
//! The pipeline, one module per stage:
//!
//! * [`oci`], [`hook`], [`client`]: the OCI hook registers each container
//!   before its first process runs;
//! * [`control`], [`protocol`], [`registry`], [`reaper`]: the daemon
//!   verifies and persists registrations, and drops a container when its
//!   init exits;
//! * [`resolve`], [`marks`], [`watch`]: fanotify marks on the container's
//!   credential files and exec;
//! * [`answer`], [`exe`], [`decide`], [`attribution`], [`index`], [`rules`]: each
//!   event is attributed, decided and answered;
//! * [`alert`], [`sink`]: aggregated ECS alerts go to JSON and syslog;
//! * [`response`], [`netlink`]: kill, stop and disconnect;
//! * [`config`], [`check`], [`daemon`]: configuration, the offline checker
//!   and the daemon's wiring.

pub mod alert;
pub mod answer;
pub mod attribution;
pub mod check;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod engine;
pub mod exceptions;
pub mod exe;
pub mod hook;
pub mod identity;
pub mod index;
pub mod marks;
pub mod netlink;
pub mod oci;
pub mod protocol;
pub mod reaper;
pub mod registry;
pub mod resolve;
pub mod response;
pub mod rules;
pub mod sink;
#[cfg(test)]
mod testdir;
pub mod watch;
