//! Answer: decide each event and answer the kernel first.
//!
//! Takes raw events from [`crate::watch::fanotify`], attributes them
//! ([`crate::attribute`]), builds one candidate per event and asks the
//! rules once ([`crate::rules`]); answers permission events at once and
//! hands [`crate::alert::Finding`]s to the alert thread through a bounded
//! queue, counting what a full queue drops.
//!
//! * [`permission`]: the permission loop and its watchdog;
//! * [`exec`]: the exec loop, its probes, ignore marks and storms;
//! * [`events`]: reading batches of events and queueing findings;
//! * [`follow`]: processes that read a credential, and the files they
//!   write, which become derived credentials;
//! * [`decide`]: one permission or exec event → verdict and findings;
//! * [`policy`]: the compiled policy and the shared decision context;
//! * [`stats`]: counters and the latency histogram.

pub mod decide;
pub mod events;
pub mod exec;
pub mod follow;
pub mod permission;
pub mod policy;
pub mod stats;
