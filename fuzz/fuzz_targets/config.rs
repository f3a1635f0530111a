//! The config file (`/etc/keyward/keyward.toml`), then the policy compiled
//! from it (rule patterns, archiver lists, exceptions), as a load or a
//! reload does.
//!
//! Input: the file's bytes; text that is not UTF-8 is refused before TOML
//! sees it, as `Config::load` does.
//!
//! Properties: no panic; what `from_toml` accepts passes `validate` again
//! and has every bounded value in range and every path absolute; the
//! compiled policy keeps the config's action; and the compiled rules judge
//! a few command lines without panicking, every reported hit a real
//! argument.
#![no_main]

use std::ffi::OsStr;
use std::path::Path;

use keyward::answer::policy::Policy;
use keyward::config::Config;
use libfuzzer_sys::fuzz_target;

const ARGVS: &[&[&str]] = &[
    &["tar", "czf", "/tmp/x.tgz", "/root/.ssh/id_rsa"],
    &["zip", "-r", "out.zip", "/home/u/.aws/credentials"],
    &["busybox", "tar", "cf", "-", "/etc/shadow"],
    &["cat", "/etc/passwd"],
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text, Path::new("fuzz.toml")) else {
        return;
    };
    cfg.validate().expect("an accepted config validates again");
    assert!((16..=1_048_576).contains(&cfg.daemon.queue_capacity));
    assert!(cfg.daemon.aggregate_ms <= 60_000);
    assert!((1..=4096).contains(&cfg.daemon.max_files_per_alert));
    assert!((10..=10_000).contains(&cfg.daemon.decision_deadline_ms));
    assert!(cfg.socket.is_absolute());
    assert!(cfg.daemon.runtime_dir.is_absolute());
    assert!(cfg.engines.docker_roots.iter().all(|r| r.is_absolute()));
    let Ok(policy) = Policy::from_config(&cfg) else {
        return;
    };
    assert_eq!(policy.default_action, cfg.response.action);
    for argv in ARGVS {
        let argv: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
        if let Some(m) = policy.rules.match_exec(argv[0], &argv) {
            assert!(m.paths.iter().all(|p| p.index < argv.len()));
        }
        let _ = policy.rules.archiver_of(argv[0], argv[0], &argv);
        for a in &argv {
            let _ = policy.rules.credential_pattern(a);
        }
    }
});
