//! Answer: decide each event and answer the kernel first.
//!
//! Takes raw events from [`crate::watch::fanotify`], attributes them
//! ([`crate::attribute`]), builds one candidate per event and asks the
//! rules once ([`crate::rules`]); answers permission events at once and
//! hands [`crate::alert::Finding`]s to the alert thread through a bounded
//! queue, counting what a full queue drops.
//!
//! * [`loops`]: the permission loop, its watchdog, and the exec loop;
//! * [`decide`]: one permission or exec event → verdict and findings;
//! * [`policy`]: the compiled policy and the shared decision context;
//! * [`stats`]: counters and the latency histogram.

pub mod decide;
pub mod loops;
