//! Watch: the fanotify groups and the marks that make the kernel report.
//!
//! Takes a container's root (a pid and its rootfs) and the rules' path
//! patterns; hands on kernel events ([`fanotify::RawEvent`]) to the answer
//! stage, and the [`index::MarkIndex`] that maps a marked inode back to its
//! container and canonical path.
//!
//! * [`fanotify`]: the four groups (permission, exec, create, write), marks and
//!   the event record parser;
//! * [`resolve`]: `openat2(RESOLVE_IN_ROOT)` expansion of patterns inside
//!   the container's root, so no symlink leads to the host;
//! * [`marks`]: installing and removing one container's marks;
//! * [`index`]: (dev, ino) → canonical path, namespaces → container.

pub mod fanotify;
pub mod index;
pub mod marks;
pub mod resolve;
