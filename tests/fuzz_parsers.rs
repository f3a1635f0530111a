//! Property-based fuzzing of every parser that takes untrusted input.
//!
//! Strategy: proptest feeds arbitrary bytes and structured-but-hostile
//! values to the OCI state reader (and the bundle config it reads), the
//! control-socket protocol, the config loader, the rule compiler and
//! matcher, the cmdline and stat parsers, the engines' metadata files, and
//! the fanotify record parser. The cargo-fuzz targets in `fuzz/` drive the
//! same entry points with coverage guidance. The property is always the same: no panic,
//! and an error (never a silent success) for input that cannot be valid.
//! Case counts are set so the suite stays fast; `PROPTEST_CASES=100000
//! cargo test --test fuzz_parsers --release` runs a longer campaign (see
//! docs/fuzzing.md for recorded runs).

use std::ffi::OsStr;
use std::io::BufReader;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use keyward::config::{Config, RulesConfig};
use keyward::rules::Rules;
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn oci_state_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(state) = keyward::hook::oci::read_state(&bytes[..]) {
            // A parsed state with an id and a bundle that does not exist
            // must be an error, not a registration.
            let _ = keyward::hook::oci::hook_action(&state);
        }
    }

    #[test]
    fn oci_state_json_shapes(id in ".{0,40}", status in "[a-z]{0,10}", pid in any::<i64>(), bundle in ".{0,40}") {
        let text = serde_json::json!({"ociVersion": "1.0.2", "id": id, "status": status, "pid": pid, "bundle": bundle}).to_string();
        if let Ok(state) = keyward::hook::oci::read_state(text.as_bytes()) {
            let _ = keyward::hook::oci::hook_action(&state);
        }
    }

    #[test]
    fn oci_action_from_state_and_config_bytes(pid in any::<i32>(), root in ".{0,20}", k in ".{0,8}", v in ".{0,8}", config in proptest::collection::vec(any::<u8>(), 0..256)) {
        // The pure half of hook_action (what the cargo-fuzz target
        // oci_state drives): a hostile config.json is an error naming the
        // file, or a registration whose rootfs is under the bundle unless
        // the root is absolute.
        let state = serde_json::json!({"ociVersion": "1.0.2", "id": "c", "status": "creating", "pid": pid, "bundle": "/b"}).to_string();
        let state = keyward::hook::oci::read_state(state.as_bytes()).unwrap();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": root}, "annotations": {k: v}}).to_string();
        for bytes in [spec.as_bytes(), &config[..]] {
            let action = keyward::hook::oci::action_with(&state, |b| {
                keyward::hook::oci::parse_config(&b.join("config.json"), bytes)
            });
            match action {
                Ok(keyward::hook::oci::HookAction::Register(r)) => {
                    prop_assert_eq!(r.pid, pid);
                    prop_assert!(r.rootfs.starts_with("/b") || Path::new(&root).is_absolute());
                }
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(e) => prop_assert!(e.to_string().contains("/b/config.json"), "{}", e),
            }
        }
    }

    #[test]
    fn engine_metadata_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), name in ".{0,16}") {
        use keyward::registry::enrich;
        let id = "e92f1e5d762d48a5c8dc52546b6e515fa9b544b179532477e03d87b459c52e0c";
        let path = Path::new("/x/file.json");
        let _ = enrich::parse_containers(path, &bytes, id);
        let _ = enrich::parse_images(path, &bytes, id);
        let _ = enrich::parse_docker(path, &bytes, id);
        let record = serde_json::json!({"ID": id, "Name": format!("/{name}"), "Config": {"Image": name}}).to_string();
        let meta = enrich::parse_docker(path, record.as_bytes(), id).unwrap().unwrap();
        for v in [meta.name, meta.image].into_iter().flatten() {
            prop_assert!(!v.is_empty() && !v.chars().any(char::is_control));
        }
    }

    #[test]
    fn protocol_lines_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut r = BufReader::new(&bytes[..]);
        while let Ok(line) = keyward::hook::protocol::read_line(&mut r) {
            let _ = keyward::hook::protocol::parse_request(&line);
        }
    }

    #[test]
    fn protocol_register_shapes(id in ".{0,64}", pid in any::<i64>(), rootfs in ".{0,64}", k in ".{0,16}", v in ".{0,16}") {
        let line = serde_json::json!({"op": "register", "id": id, "pid": pid, "bundle": "/b", "rootfs": rootfs, "annotations": {k: v}}).to_string();
        let _ = keyward::hook::protocol::parse_request(line.as_bytes());
        let _ = keyward::registry::verify::check_id(&id);
    }

    #[test]
    fn config_text_never_panics(text in ".{0,512}") {
        let _ = Config::from_toml(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_values_are_validated(action in ".{0,12}", facility in ".{0,12}", queue in any::<i64>(), server in ".{0,30}") {
        let text = format!(
            "[response]\naction = {action:?}\n[alerts.syslog]\nfacility = {facility:?}\nserver = {server:?}\n[daemon]\nqueue_capacity = {queue}\n"
        );
        if let Ok(cfg) = Config::from_toml(&text, Path::new("fuzz.toml")) {
            prop_assert!((16..=1_048_576).contains(&cfg.daemon.queue_capacity));
        }
    }

    #[test]
    fn rule_patterns_compile_or_quote_the_pattern(patterns in proptest::collection::vec(".{0,24}", 0..8)) {
        let mut cfg = RulesConfig::default();
        cfg.file.paths = patterns.clone();
        match Rules::compile(&cfg) {
            Ok(rules) => {
                for p in &patterns {
                    let _ = rules.credential_pattern(OsStr::new(p));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("rules.file.paths"), "{}", msg);
            }
        }
    }

    #[test]
    fn matcher_handles_any_argv(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..64)) {
        let rules = Rules::compile(&RulesConfig::default()).unwrap();
        let argv: Vec<&OsStr> = args.iter().map(|a| OsStr::from_bytes(a)).collect();
        let name = argv.first().copied().unwrap_or(OsStr::new(""));
        let m = rules.match_exec(name, &argv);
        if let Some(m) = m {
            // Every reported hit really is an argument.
            for p in &m.paths {
                prop_assert!(p.index < argv.len());
            }
        }
        let _ = rules.archiver_of(name, name, &argv);
        let _ = rules.is_incidental(OsStr::new("/etc/passwd"), &argv, Path::new("/"));
    }

    #[test]
    fn proc_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = keyward::attribute::procfs::parse_stat(1, &bytes);
        let args = keyward::attribute::procfs::parse_cmdline(&bytes);
        let nuls = bytes.iter().filter(|&&b| b == 0).count();
        prop_assert!(args.len() <= nuls + 1);
    }

    #[test]
    fn fanotify_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Only records whose fd field is -1 may be fed here: a parsed fd is
        // owned and closed. Force every fd field to FAN_NOFD.
        let mut bytes = bytes;
        let len = keyward::watch::fanotify::METADATA_LEN;
        let mut off = 0;
        while off + len <= bytes.len() {
            bytes[off + 16..off + 20].copy_from_slice(&(-1i32).to_ne_bytes());
            let ev = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            off += ev.max(len);
        }
        let mut out = Vec::new();
        if let Ok(used) = keyward::watch::fanotify::parse_events(&bytes, &mut out) {
            prop_assert!(used <= bytes.len());
        }
    }
}

/// cargo-fuzz (engine_metadata, minimised to `d\0["",""]`): serde's
/// derived structs take a JSON array, fields by position, so `["",""]`
/// was a Docker record of container "" named "". The engines write
/// objects; an array anywhere a record is expected is malformed.
#[test]
fn engine_records_in_array_form_are_refused() {
    use keyward::registry::enrich;
    let id = "e92f1e5d762d48a5c8dc52546b6e515fa9b544b179532477e03d87b459c52e0c";
    let path = Path::new("/x/config.v2.json");
    fn malformed<T>(r: Result<T, keyward::registry::enrich::EngineError>) {
        let e = r.map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("/x/config.v2.json") && e.contains("malformed"),
            "{e}"
        );
    }
    malformed(enrich::parse_docker(path, br#"["",""]"#, ""));
    malformed(enrich::parse_docker(
        path,
        format!(r#"["{id}","/web"]"#).as_bytes(),
        id,
    ));
    malformed(enrich::parse_containers(
        path,
        format!(r#"[["{id}",["web"]]]"#).as_bytes(),
        id,
    ));
    malformed(enrich::parse_images(path, br#"[["img",["app:1"]]]"#, "img"));
    // A nested array is no object either: Docker's `Config` as one is
    // malformed, and libpod metadata as one is ignored (the names win).
    malformed(enrich::parse_docker(
        path,
        format!(r#"{{"ID":"{id}","Name":"/web","Config":["app:1"]}}"#).as_bytes(),
        id,
    ));
    let containers = format!(r#"[{{"id":"{id}","names":[],"metadata":"[\"app:2\",\"web\"]"}}]"#);
    let record = enrich::parse_containers(path, containers.as_bytes(), id)
        .unwrap()
        .unwrap();
    assert_eq!(record.meta, enrich::EngineMeta::default());
    // The object forms still read.
    let docker = format!(r#"{{"ID":"{id}","Name":"/web","Config":{{"Image":"app:1"}}}}"#);
    let meta = enrich::parse_docker(path, docker.as_bytes(), id)
        .unwrap()
        .unwrap();
    assert_eq!(meta.name.as_deref(), Some("web"));
    assert_eq!(meta.image.as_deref(), Some("app:1"));
}
