//! Alert: findings in, alerts out to every sink.
//!
//! Takes the [`Finding`]s the decision threads queue and hands on one
//! alert per archiver run, rendered as nested ECS JSON, to the JSON lines
//! file and syslog; carries out the run's response on the way.
//!
//! * [`finding`]: what a decision thread sends;
//! * [`aggregate`]: one alert per run (container, pid, start time);
//! * [`ratelimit`]: per-container limit and its summary;
//! * [`ecs`]: rendering alerts, process events and health alerts as ECS;
//! * [`deliver`]: the alert thread, which ties these to the sinks and the
//!   response stage;
//! * [`sink`]: the JSON lines file and syslog, behind one buffered
//!   transport.

pub mod aggregate;
pub mod deliver;
pub mod ecs;
pub mod finding;
pub mod ratelimit;
pub mod sink;

pub use aggregate::{Aggregator, Alert, FileTouch};
pub use ecs::{Degradation, process_start_doc, rfc3339, start_time};
pub use finding::{Finding, Trigger};
pub use ratelimit::{RateLimiter, rate_limit_doc};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::procfs::ProcessInfo;
    use crate::config::Action;
    use crate::rules::PathHit;
    use crate::rules::{ArchiverHit, ExecMatch};
    use crate::watch::index::ContainerRef;
    use serde_json::json;
    use std::time::{Duration, Instant, SystemTime};

    /// Every run's process has exited.
    fn gone(_: i32, _: u64) -> bool {
        false
    }

    fn proc_info(pid: i32, start: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_time_ticks: start,
            name: "tar".into(),
            exe: "/usr/bin/tar".into(),
            args: vec![
                "tar".into(),
                "czf".into(),
                "/tmp/x".into(),
                "/root/.ssh".into(),
            ],
            args_count: 4,
            ..Default::default()
        }
    }

    fn open(pid: i32, start: u64, path: &str) -> Finding {
        Finding {
            at: SystemTime::now(),
            container: ContainerRef {
                id: "c1".into(),
                ..Default::default()
            },
            process: proc_info(pid, start),
            trigger: Trigger::Open {
                path: path.into(),
                origin: path.into(),
                opened_as: path.into(),
                pattern: path.into(),
                archiver: ArchiverHit::Name { name: "tar".into() },
                denied: false,
                source: None,
            },
            action: Action::Alert,
            response: None,
        }
    }

    #[test]
    fn one_alert_per_run_lists_every_file() {
        let mut agg = Aggregator::new(Duration::from_millis(100), 64);
        let t0 = Instant::now();
        assert!(agg.add(open(10, 5, "/root/.ssh/id_rsa"), t0));
        assert!(!agg.add(open(10, 5, "/root/.ssh/known_hosts"), t0));
        assert!(!agg.add(open(10, 5, "/root/.ssh/id_rsa"), t0));
        assert!(
            agg.drain_due(t0 + Duration::from_millis(50), false, &gone)
                .is_empty()
        );
        let out = agg.drain_due(t0 + Duration::from_millis(150), false, &gone);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].files.len(), 2);
        assert_eq!(out[0].files_total, 3);
        assert_eq!(agg.pending(), 0);
    }

    #[test]
    fn a_file_seen_opened_and_then_held_is_listed_once() {
        // The open, then a late exec probe that found the same file as an
        // fd (seen on a loaded host): one file, two touches.
        let mut agg = Aggregator::new(Duration::from_millis(100), 64);
        let t0 = Instant::now();
        let mut held = open(10, 5, "/root/.ssh/id_rsa");
        if let Trigger::Open { opened_as, .. } = &mut held.trigger {
            *opened_as = "inherited fd 4".into();
        }
        assert!(agg.add(open(10, 5, "/root/.ssh/id_rsa"), t0));
        assert!(!agg.add(held, t0));
        let out = agg.drain_due(t0 + Duration::from_millis(150), false, &gone);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].files.len(), 1, "{:?}", out[0].files);
        assert_eq!(out[0].files[0].opened_as, "/root/.ssh/id_rsa");
        assert_eq!(out[0].files_total, 2);
        // A shell's open of a redirect, then the archiver it exec'd holding
        // it as fd 0: two programs, both listed.
        let mut shell = open(11, 5, "/root/.ssh/id_rsa");
        shell.process.exe = "/bin/sh".into();
        let mut tar = open(11, 5, "/root/.ssh/id_rsa");
        if let Trigger::Open { opened_as, .. } = &mut tar.trigger {
            *opened_as = "inherited fd 0".into();
        }
        assert!(agg.add(shell, t0));
        assert!(!agg.add(tar, t0));
        let out = agg.drain_due(t0 + Duration::from_millis(300), false, &gone);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].files.len(), 2, "{:?}", out[0].files);
    }

    #[test]
    fn start_ticks_become_a_date_near_now_for_this_process() {
        let me = crate::attribute::procfs::stat(std::process::id() as i32).unwrap();
        let t = start_time(me.start_time_ticks).unwrap();
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(age < Duration::from_secs(3600), "{age:?}");
        let doc = process_start_doc(
            "h",
            &ContainerRef {
                id: "c".into(),
                ..Default::default()
            },
            &proc_info(1, me.start_time_ticks),
            SystemTime::now(),
        );
        assert_eq!(doc["event"]["type"][0], "start");
        assert_eq!(doc["process"]["args"][0], "tar");
        assert!(doc["process"]["start"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn rate_limit_folds_repeats_but_never_a_new_credential() {
        let mut r = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let c = |container, files: &'static [&'static str], process| ratelimit::Candidate {
            container,
            rule: "keyward.file.archiver-opened-credential",
            files,
            process,
        };
        let kh: &[&str] = &["/root/.ssh/known_hosts"];
        // The first of a file always goes (and takes room); repeats fill
        // the room (2), then are held.
        assert!(r.admit(&c("a", kh, "tar"), t0));
        assert!(r.admit(&c("a", kh, "tar"), t0));
        for _ in 0..70 {
            assert!(!r.admit(&c("a", kh, "tar"), t0));
        }
        // A credential not alerted in the window goes out at once.
        assert!(r.admit(&c("a", &["/root/.aws/credentials"], "zip"), t0));
        assert!(!r.admit(&c("a", &["/root/.aws/credentials"], "zip"), t0));
        assert!(
            r.admit(&c("b", kh, "tar"), t0),
            "containers are limited separately"
        );
        assert!(r.closed_windows(t0 + Duration::from_secs(1)).is_empty());
        let closed = r.closed_windows(t0 + Duration::from_secs(61));
        assert_eq!(closed.len(), 1);
        let h = &closed[0];
        assert_eq!((h.container.as_str(), h.count), ("a", 71));
        assert!(h.files.contains("/root/.ssh/known_hosts"));
        assert_eq!(h.processes.get("tar"), Some(&70));
        assert_eq!(h.processes.get("zip"), Some(&1));
        let doc = rate_limit_doc("host", h, Duration::from_secs(60));
        assert_eq!(doc["keyward"]["suppressed"], 71);
        assert_eq!(doc["keyward"]["processes"]["tar"], 70);
        assert!(doc["message"].as_str().unwrap().contains("known_hosts"));
        assert!(
            r.admit(&c("a", kh, "tar"), t0 + Duration::from_secs(61)),
            "a new window"
        );
        assert!(RateLimiter::new(0, Duration::ZERO).admit(&c("x", kh, "tar"), t0));
    }

    #[test]
    fn a_long_run_alerts_within_a_second_then_updates_and_closes() {
        let mut agg = Aggregator::new(Duration::from_millis(300), 64);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let running = |_: i32, _: u64| true;
        // A file every 100 ms: the run never goes quiet for 300 ms.
        agg.add(open(7, 1, "/root/.ssh/id_rsa"), t0);
        for (i, at) in [100, 200, 300, 400].into_iter().enumerate() {
            assert!(agg.drain_due(ms(at), false, &running).is_empty());
            agg.add(open(7, 1, &format!("/home/u{i}/.ssh/id_rsa")), ms(at));
        }
        let first = agg.drain_due(ms(500), false, &running);
        assert_eq!(first.len(), 1, "the first alert goes half a second in");
        let r1 = first[0].run.clone().unwrap();
        assert_eq!((r1.seq, r1.last, r1.files_added.len()), (1, false, 5));
        // More files: one update per second at most while they keep coming.
        agg.add(open(7, 1, "/root/.aws/credentials"), ms(1100));
        assert!(agg.drain_due(ms(1200), false, &running).is_empty());
        agg.add(open(7, 1, "/etc/shadow"), ms(1300));
        let up = agg.drain_due(ms(2000), false, &running);
        assert_eq!(up.len(), 1);
        let r2 = up[0].run.clone().unwrap();
        assert_eq!(r2.id, r1.id, "one run id");
        assert_eq!(r2.seq, 2);
        assert!(!r2.last);
        assert_eq!(r2.files_added, ["/root/.aws/credentials", "/etc/shadow"]);
        assert!(up[0].message().contains("update 2"), "{}", up[0].message());
        let doc = up[0].to_ecs("h");
        assert_eq!(doc["keyward"]["run"]["seq"], 2);
        assert_eq!(doc["event"]["id"], format!("{}-2", r1.id));
        // Nothing new, still running: no update. Then the process exits.
        assert!(agg.drain_due(ms(3500), false, &running).is_empty());
        let closed = agg.drain_due(ms(3600), false, &gone);
        let r3 = closed[0].run.clone().unwrap();
        assert_eq!((r3.seq, r3.last, r3.files_added.len()), (3, true, 0));
        assert_eq!(closed[0].files.len(), 7);
        assert_eq!(agg.pending(), 0);
        assert!(closed[0].message().contains("run closed"));
        // A quick run is one alert, final at once.
        agg.add(open(8, 1, "/etc/shadow"), t0);
        let one = agg.drain_due(ms(400), false, &gone);
        assert!(one[0].run.as_ref().unwrap().last);
        // A process that lives on but finds nothing is closed when idle.
        agg.add(open(9, 1, "/etc/shadow"), t0);
        assert_eq!(agg.drain_due(ms(400), false, &running).len(), 1);
        assert!(agg.drain_due(ms(20_000), false, &running).is_empty());
        let idle = agg.drain_due(
            t0 + aggregate::IDLE_CLOSE + Duration::from_secs(1),
            false,
            &running,
        );
        assert!(idle[0].run.as_ref().unwrap().last);
    }

    #[test]
    fn a_run_is_named_by_what_its_process_runs_after_an_exec() {
        let mut agg = Aggregator::new(Duration::ZERO, 8);
        let t0 = Instant::now();
        // First seen as its shell's fork (a pipeline member before exec)...
        let mut fork = open(9, 1, "/root/.ssh/id_rsa");
        fork.process.name = "sh".into();
        fork.process.exe = "/bin/busybox".into();
        fork.process.args = vec!["/bin/sh".into(), "-c".into(), "cat k | gzip".into()];
        agg.add(fork, t0);
        // ...then as the gzip it exec'd.
        let mut gz = open(9, 1, "/root/.ssh/id_rsa");
        gz.process.name = "gzip".into();
        gz.process.exe = "/usr/bin/gzip".into();
        gz.process.args = vec!["/usr/bin/gzip".into(), "-c".into()];
        agg.add(gz, t0);
        let a = agg.drain_due(t0, true, &gone).pop().unwrap();
        assert_eq!(a.process.name, "gzip");
        assert_eq!(a.files.len(), 1);
    }

    #[test]
    fn reused_pid_with_new_start_time_is_a_new_run() {
        let mut agg = Aggregator::new(Duration::ZERO, 64);
        let t0 = Instant::now();
        assert!(agg.add(open(10, 5, "/etc/shadow"), t0));
        assert!(agg.add(open(10, 6, "/etc/shadow"), t0));
        assert_eq!(agg.drain_due(t0, true, &gone).len(), 2);
    }

    #[test]
    fn file_list_is_bounded_but_counted() {
        let mut agg = Aggregator::new(Duration::ZERO, 2);
        let t0 = Instant::now();
        for i in 0..5 {
            agg.add(open(1, 1, &format!("/home/u{i}/.ssh/id_rsa")), t0);
        }
        let a = agg.drain_due(t0, true, &gone).pop().unwrap();
        assert_eq!(a.files.len(), 2);
        assert_eq!(a.files_total, 5);
    }

    #[test]
    fn ecs_document_has_the_design_fields() {
        let mut agg = Aggregator::new(Duration::ZERO, 8);
        let t0 = Instant::now();
        let mut f = open(42, 7, "/root/.ssh/id_rsa");
        f.container = ContainerRef {
            id: "abc123".into(),
            name: Some("web".into()),
            image: Some("busybox:latest".into()),
            runtime: None,
            pod: Some(crate::watch::index::PodRef {
                namespace: Some("shop".into()),
                name: Some("cart-7f9c4".into()),
            }),
        };
        agg.add(f, t0);
        let exec = Finding {
            trigger: Trigger::Exec {
                matched: ExecMatch {
                    archiver: ArchiverHit::Name { name: "tar".into() },
                    paths: vec![PathHit {
                        index: 3,
                        arg: "/root/.ssh/id_rsa".into(),
                        pattern: "/root/.ssh/id_rsa".into(),
                    }],
                },
            },
            ..open(42, 7, "/x")
        };
        let mut exec = exec;
        exec.container.id = "abc123".into();
        agg.add(exec, t0);
        let a = agg.drain_due(t0, true, &gone).pop().unwrap();
        let doc = a.to_ecs("h1");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["container"]["id"], "abc123");
        assert_eq!(doc["container"]["name"], "web");
        assert_eq!(doc["container"]["image"]["name"], "busybox:latest");
        assert_eq!(
            doc["orchestrator"],
            json!({"type": "kubernetes", "namespace": "shop",
                   "resource": {"type": "pod", "name": "cart-7f9c4"}})
        );
        assert_eq!(doc["rule"]["id"], crate::rules::EXEC_RULE_ID);
        assert_eq!(doc["process"]["pid"], 42);
        assert_eq!(doc["file"]["path"], "/root/.ssh/id_rsa");
        assert_eq!(doc["host"]["hostname"], "h1");
        assert!(
            doc["threat"]["technique"]["subtechnique"]["id"]
                .as_array()
                .unwrap()
                .contains(&json!("T1560.001"))
        );
        assert!(doc["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(doc["keyward"]["response"]["result"], "ok");
        assert!(a.message().contains("abc123") && a.message().contains("/root/.ssh/id_rsa"));
    }
}
