//! A short run of every cargo-fuzz target, in the one test command.
//!
//! Strategy: the coverage-guided targets in `fuzz/` (docs/fuzzing.md) are
//! only worth having if they still build and still survive their seeds,
//! so `cargo test` builds them all once (`cargo fuzz build --dev -s none`,
//! into `fuzz/target`, apart from the workspace's `target/`) and runs each
//! for a few seconds from a copy of its committed
//! seeds (a run adds what it finds to its corpus directory, and the
//! committed seeds must not grow). Every cargo-fuzz process runs in its
//! own process group under a hard timeout, and the group is killed on an
//! overrun. A failed build, a crash (libFuzzer exits non-zero and leaves
//! the input in `fuzz/artifacts/<target>/`) or a timeout fails the test
//! with the tail of the run's output. The list of targets must match
//! `fuzz/fuzz_targets/`, so a new target is never left out.
//!
//! The stable toolchain builds the targets with `RUSTC_BOOTSTRAP=1`. The
//! smoke run is a debug build without AddressSanitizer: it is there to
//! catch a target that no longer builds, a seed that now panics or an
//! assertion that no longer holds, and keyward's own code on these paths
//! has no `unsafe` for ASan to watch, so ASan would mostly add to the
//! build (the recorded campaign in docs/fuzzing.md runs with it). Without cargo-fuzz the test
//! skips, and under `CI=true` fails: `.ci/run` installs it.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{required, unique};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Every target in `fuzz/fuzz_targets/`.
const TARGETS: &[&str] = &[
    "config",
    "control_protocol",
    "elf_notes",
    "engine_metadata",
    "fanotify_records",
    "oci_state",
    "procfs",
    "runtime_args",
];
/// libFuzzer's time per target: long enough to mutate past the seeds,
/// short enough that all targets cost well under a minute.
const SECONDS_PER_TARGET: u64 = 4;
/// Hard cap on the build: a fresh build of keyward and its dependencies
/// with coverage instrumentation took 118 s on two busy cores; the cap
/// leaves room for a loaded machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Hard cap on one target's run (the build is already done).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(Path::new(REPO).join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        // The fuzz crate keeps its build in fuzz/target, whatever the
        // workspace's is.
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null());
    cmd
}

/// Run `cmd` with its output in `log`, in its own process group, killing
/// the group after `timeout`. Panics, with the log's tail, unless it
/// exits 0.
fn run(what: &str, mut cmd: Command, log: &Path, timeout: Duration) {
    let out = fs::File::create(log).unwrap();
    let child = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn();
    let mut child = child.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > timeout {
            // The group: cargo fuzz runs the target as its child.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{what} failed ({s}); output ends:\n{tail}"),
        None => panic!("{what} did not finish within {timeout:?}; output ends:\n{tail}"),
    }
}

fn copy_dir(from: &Path, to: &Path) -> usize {
    fs::create_dir_all(to).unwrap();
    let mut n = 0;
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        n += 1;
    }
    n
}

#[test]
fn every_fuzz_target_builds_and_survives_a_short_run() {
    let fuzz = Path::new(REPO).join("fuzz");
    let mut listed: Vec<String> = fs::read_dir(fuzz.join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, TARGETS, "fuzz/fuzz_targets/ and TARGETS differ");

    let have = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !required("cargo-fuzz (cargo install cargo-fuzz --locked)", have) {
        return;
    }

    let tmp = std::env::temp_dir().join(unique("keyward-fuzz-smoke"));
    fs::create_dir_all(&tmp).unwrap();
    // The lock file is committed: refuse to build with other versions.
    let mut locked = cargo();
    locked.args(["metadata", "--locked", "--format-version", "1"]);
    run(
        "fuzz/Cargo.lock is up to date",
        locked,
        &tmp.join("metadata.log"),
        BUILD_TIMEOUT,
    );
    let t0 = Instant::now();
    let mut build = cargo();
    build.args(["fuzz", "build", "--dev", "-s", "none"]);
    run(
        "cargo fuzz build --dev -s none",
        build,
        &tmp.join("build.log"),
        BUILD_TIMEOUT,
    );
    eprintln!("fuzz targets built in {:.0?}", t0.elapsed());

    for target in TARGETS {
        let corpus: PathBuf = tmp.join("corpus").join(target);
        let seeds = copy_dir(&fuzz.join("corpus").join(target), &corpus);
        assert!(seeds > 0, "fuzz/corpus/{target} has no seeds");
        let mut cmd = cargo();
        // The flags of the build, or cargo fuzz would build again.
        cmd.args(["fuzz", "run", "--dev", "-s", "none", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
            // One input running this long is a hang.
            .arg("-timeout=10")
            .arg("-print_final_stats=1");
        let log = tmp.join(format!("{target}.log"));
        let t = Instant::now();
        run(&format!("fuzz target {target}"), cmd, &log, RUN_TIMEOUT);
        let text = fs::read_to_string(&log).unwrap_or_default();
        let execs = text
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(str::trim)
            .unwrap_or("?");
        eprintln!(
            "{target}: {execs} inputs from {seeds} seeds in {:.1?}, no crash",
            t.elapsed()
        );
    }
    let _ = fs::remove_dir_all(&tmp);
}
