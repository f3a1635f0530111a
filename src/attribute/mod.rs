//! Attribute: who did it.
//!
//! Takes the pid of an event and hands on what the kernel says about that
//! process ([`procfs::RawProcess`], [`procfs::ProcessInfo`]), the container
//! it belongs to, what its executable is ([`exe::ExeClass`]) and whether
//! that file is a known archiver by content ([`identity::Identities`]).
//!
//! * [`procfs`]: bounded reads of `/proc/<pid>/{stat,exe,cmdline,comm,cwd}`;
//! * [`container`]: pid → watched container, by namespaces;
//! * [`exe`]: the class of an exec'd file, cached per file version;
//! * [`identity`]: archivers known by ELF build-id, learned from the host
//!   and images.

pub mod container;
pub mod exe;
pub mod identity;
pub mod procfs;
