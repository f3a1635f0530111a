//! The procfs files a container's processes control the content of:
//! `/proc/<pid>/stat` (comm is the process's own choice), `cmdline`,
//! `cgroup` and `fdinfo/<fd>`, and the rule matcher that judges the argv
//! read from `cmdline`.
//!
//! Input: one file's bytes, given to every parser.
//!
//! Properties: no panic; a parsed stat came from text with a `)` and its
//! state is a byte of it; comm is at most 64 bytes and lies between the
//! first `(` and the last `)`; cmdline keeps every argument's bytes (they
//! join back into the input); every cgroup line has a hierarchy and an
//! absolute path, and its keys up the tree end; an fd end needs a
//! `flags:` line; every matcher hit is a real argument index.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use keyward::attribute::procfs::{self, Comm};
use keyward::config::RulesConfig;
use keyward::rules::Rules;
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules::compile(&RulesConfig::default()).expect("default rules compile"))
}

fuzz_target!(|data: &[u8]| {
    // stat, and its comm.
    if let Ok(s) = procfs::parse_stat(7, data) {
        let close = data
            .iter()
            .rposition(|&b| b == b')')
            .expect("a parsed stat has a ')'");
        assert!(s.state == b'?' || data[close..].contains(&s.state));
    }
    let comm = Comm::of_stat(data);
    assert!(comm.as_bytes().len() <= 64);
    if !comm.as_bytes().is_empty() {
        let open = data.iter().position(|&b| b == b'(').unwrap();
        let close = data.iter().rposition(|&b| b == b')').unwrap();
        assert!(data[open + 1..close].starts_with(comm.as_bytes()));
    }

    // cmdline: nothing lost, nothing invented.
    let args = procfs::parse_cmdline(data);
    let raw = data.strip_suffix(b"\0").unwrap_or(data);
    let joined: Vec<u8> = args
        .iter()
        .map(|a| a.as_bytes())
        .collect::<Vec<_>>()
        .join(&0);
    assert_eq!(joined, raw);
    assert!(args.len() <= data.iter().filter(|&&b| b == 0).count() + 1);

    // And the matcher over that argv.
    let argv: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let name = argv.first().copied().unwrap_or(OsStr::new(""));
    if let Some(m) = rules().match_exec(name, &argv) {
        assert!(m.paths.iter().all(|p| p.index < argv.len()));
    }
    let _ = rules().archiver_of(name, name, &argv);
    let _ = rules().is_incidental(OsStr::new("/etc/passwd"), &argv, Path::new("/"));

    // cgroup.
    if let Ok(text) = std::str::from_utf8(data) {
        for line in procfs::parse_cgroups(text) {
            assert!(line.path.starts_with('/'));
            assert!(line.hierarchy.contains(':'));
            assert_eq!(line.key(), format!("{}:{}", line.hierarchy, line.path));
            let depth = line.path.matches('/').count();
            let mut n = 0;
            for key in line.keys_up() {
                assert!(key.starts_with(&line.hierarchy));
                n += 1;
                assert!(n <= depth, "keys_up does not end: {line:?}");
            }
        }
    }

    // fdinfo.
    if procfs::pipe_end(data).is_some() {
        assert!(data.windows(6).any(|w| w == b"flags:"));
    }
});
