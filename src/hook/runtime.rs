//! `keyward runtime`: an OCI runtime wrapper for engines that read no
//! hooks.d (Docker, containerd 1.6), in the way GPU and sandbox runtimes
//! plug into them.
//!
//! It takes the runtime's command line, unchanged, after its own options:
//!
//! ```text
//! keyward runtime [--socket PATH] [--runtime NAME|PATH] [--fail-open] [--] RUNTIME-ARGS...
//! keyward-runtime [same]                  (a link to keyward: for containerd's BinaryName)
//! ```
//!
//! For `create`, `run` and `restore` (the commands that start a container
//! from a bundle) it appends `keyward hook --socket PATH` to the bundle's
//! `config.json` at `createRuntime`, then executes the real runtime with the
//! arguments as they came. Every other command (`start`, `exec`, `state`,
//! `events`, `update`, `checkpoint`, `features`, ...) is executed at once,
//! with nothing read or changed: the wrapper only has to know enough of the
//! command line to find the command and its bundle, so a runtime feature it
//! has never heard of still works.
//!
//! Where the command line could name the bundle two ways, or the command
//! could be read two ways, it errs towards adding the hook or refusing
//! ([`classify`]), never towards a container started without it.
//!
//! It keeps the hook's promise: if the hook cannot be added the container
//! does not start (the runtime is not run and the error names keyward),
//! unless `--fail-open` was given; if the daemon cannot be reached the hook
//! itself fails and the runtime refuses the container.
//!
//! With no options, the socket and the real runtime come from
//! `KEYWARD_SOCKET` and `KEYWARD_RUNTIME` in the environment (what a
//! containerd unit can set for its shims), else [`DEFAULT_SOCKET`] and
//! `runc`.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::config::DEFAULT_SOCKET;
use crate::hook::oci::{self, OciError};

/// The name of the link that makes the keyward binary act as `keyward
/// runtime` without any argument of its own.
pub const LINK_NAME: &str = "keyward-runtime";
/// The hook's timeout in the bundle, in seconds: as in the shipped hooks.d
/// file, above the hook's own limits ([`crate::hook::HOOK_TIMEOUT`]).
pub const HOOK_TIMEOUT_SECS: u64 = 10;
/// Set for the real runtime, so a `--runtime` that leads back to the
/// wrapper (a copy of keyward, a script calling it) is refused instead of
/// exec'ing forever.
pub const WRAPPED_ENV: &str = "KEYWARD_RUNTIME_WRAPPED";
/// Where the real runtime is looked for when `PATH` is unset or empty (a
/// shim's environment may have none).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors from the wrapper. Each one means the real runtime was not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    #[error("no runtime command line after keyward's options")]
    NoCommand,
    #[error(transparent)]
    Config(#[from] OciError),
    #[error("bundle config {path} has a `hooks` that is not an object of arrays")]
    BadHooks { path: PathBuf },
    #[error("cannot add keyward's hook to {path}: {source}")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot tell which bundle or config file {arg:?} names (runc and crun read it differently); \
         give --bundle DIR"
    )]
    UnclearBundle { arg: String },
    #[error(
        "the wrapper was run again by its own real runtime ({WRAPPED_ENV} is set): \
         --runtime must name runc, crun or another runtime, not keyward"
    )]
    Reentered,
    #[error("cannot find keyward's own binary: {0}")]
    SelfExe(#[source] std::io::Error),
    #[error("the real runtime {runtime:?} is not an executable in {path}")]
    RuntimeNotFound { runtime: OsString, path: String },
    #[error(
        "the real runtime {runtime} is keyward itself; name runc, crun or a path with --runtime"
    )]
    RuntimeIsSelf { runtime: PathBuf },
    #[error("cannot execute the real runtime {runtime}: {source}")]
    Exec {
        runtime: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The wrapper's own options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The daemon socket the added hook reports to.
    pub socket: PathBuf,
    /// The real runtime: a name looked up in `PATH`, or a path.
    pub runtime: OsString,
    /// Start the container even when the hook cannot be added or the daemon
    /// cannot be reached.
    pub fail_open: bool,
}

impl Options {
    /// The defaults, from `KEYWARD_SOCKET` and `KEYWARD_RUNTIME` when set.
    pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Self {
        let set = |k: &str| get(k).filter(|v| !v.is_empty());
        Self {
            socket: set("KEYWARD_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            runtime: set("KEYWARD_RUNTIME").unwrap_or_else(|| OsString::from("runc")),
            fail_open: false,
        }
    }
}

/// Split the wrapper's options from the runtime's command line. keyward's
/// options come first; the first argument that is not one of them (or
/// everything after `--`) is the runtime's, so runtime options that
/// happen to share a name are never taken.
pub fn parse_args(
    args: Vec<OsString>,
    mut opts: Options,
) -> Result<(Options, Vec<OsString>), RuntimeError> {
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.peek() {
        let b = a.as_bytes();
        let (name, inline) = match b.iter().position(|&c| c == b'=') {
            Some(i) if b.starts_with(b"--") => (&b[..i], Some(OsStr::from_bytes(&b[i + 1..]))),
            _ => (b, None),
        };
        let inline = inline.map(OsStr::to_os_string);
        match name {
            b"--" => {
                it.next();
                break;
            }
            b"--fail-open" if inline.is_none() => {
                it.next();
                opts.fail_open = true;
            }
            b"--socket" => {
                it.next();
                opts.socket = option_value("--socket", inline, &mut it)?.into();
            }
            b"--runtime" => {
                it.next();
                opts.runtime = option_value("--runtime", inline, &mut it)?;
            }
            _ => break,
        }
    }
    let rest: Vec<OsString> = it.collect();
    if rest.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    Ok((opts, rest))
}

/// The value of option `key`: after its `=`, else the next argument; never
/// empty.
fn option_value(
    key: &'static str,
    inline: Option<OsString>,
    rest: &mut impl Iterator<Item = OsString>,
) -> Result<OsString, RuntimeError> {
    inline
        .or_else(|| rest.next())
        .filter(|v| !v.is_empty())
        .ok_or(RuntimeError::MissingValue(key))
}

/// What the runtime is asked to do, as far as the wrapper cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// A command that starts a container from `config` (the bundle's
    /// `config.json`, or the file crun's `--config` names).
    Create { command: String, config: PathBuf },
    /// A create whose bundle or config file the wrapper cannot tell for
    /// sure (`arg`): refused, never guessed, so no container starts from a
    /// file the hook was not added to.
    Unclear { arg: String },
    /// Anything else: passed through untouched.
    PassThrough,
}

/// Global options of runc, crun and youki that take a value as the next
/// argument. A value that is itself a command name is not taken, so an
/// option with an optional value (`crun --rootless`) cannot hide the
/// command.
const GLOBAL_VALUE_OPTIONS: &[&str] = &[
    "--root",
    "--log",
    "--log-format",
    "--log-level",
    "--criu",
    "--rootless",
    "--cgroup-manager",
];

/// Commands that read a bundle and start a container in it.
const CREATE_COMMANDS: &[&str] = &["create", "run", "restore"];

/// Every command runc, crun and youki know, so an unknown option's value is
/// not mistaken for the command.
const COMMANDS: &[&str] = &[
    "checkpoint",
    "create",
    "delete",
    "events",
    "exec",
    "features",
    "help",
    "init",
    "kill",
    "list",
    "mounts",
    "pause",
    "ps",
    "restore",
    "resume",
    "run",
    "spec",
    "start",
    "state",
    "update",
];

/// Arguments before the command that make the runtime print and exit.
const GLOBAL_INFO_OPTIONS: &[&str] = &["-h", "--help", "-v", "--version"];

/// The command word and its index, reading a known value-taking global
/// option's next argument as its value always (`consume`) or only when it
/// is not a command name. runc (Go) takes the next argument; crun's
/// `--rootless` takes only `=VALUE`. `None` for no command, or a global
/// `--help`/`--version`.
fn find_command(args: &[OsString], consume: bool) -> Option<(usize, String)> {
    let mut i = 0;
    loop {
        let s = args.get(i)?.to_string_lossy();
        if GLOBAL_INFO_OPTIONS.contains(&s.as_ref()) {
            return None;
        }
        if !s.starts_with('-') {
            if COMMANDS.contains(&s.as_ref()) {
                return Some((i, s.into_owned()));
            }
            // The value of an option we do not know; the command is later.
            i += 1;
            continue;
        }
        let takes_value = GLOBAL_VALUE_OPTIONS.contains(&s.as_ref())
            && args
                .get(i + 1)
                .is_some_and(|v| consume || !COMMANDS.contains(&v.to_string_lossy().as_ref()));
        i += if takes_value { 2 } else { 1 };
    }
}

/// Find the command and, for a create, the config file it starts from.
///
/// Where the runtimes' parsers could read the global options two ways
/// (a value that is a command name), the command is a create if either
/// reading makes it one: an unneeded hook costs nothing, a missing one
/// leaves a container unwatched. The bundle is `--bundle DIR`,
/// `--bundle=DIR` or `-b DIR` (the current directory by default, as runc
/// has it), and crun's `--config FILE`, `--config=FILE` or `-f FILE`
/// replaces its `config.json`. Other spellings that runc's Go flags and
/// crun's argp read differently (`-bundle`, `-b=DIR`, `-bDIR`, `--bund`)
/// are [`Invocation::Unclear`]. `--help` or `-h` passes through: nothing
/// is started.
pub fn classify(args: &[OsString]) -> Invocation {
    let readings = [find_command(args, false), find_command(args, true)];
    let Some((at, command)) = readings
        .iter()
        .flatten()
        .find(|(_, c)| CREATE_COMMANDS.contains(&c.as_str()))
        .cloned()
    else {
        return Invocation::PassThrough;
    };
    let mut bundle = None;
    let mut config = None;
    let mut rest = args[at + 1..].iter();
    while let Some(a) = rest.next() {
        let s = a.to_string_lossy();
        if s == "--help" || s == "-h" {
            return Invocation::PassThrough;
        }
        if s == "--" {
            break;
        }
        // Past the id too: Go's flags stop there, but crun's argp does not.
        if !s.starts_with('-') {
            continue;
        }
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) if s.starts_with("--") => (n, Some(PathBuf::from(v))),
            _ => (s.as_ref(), None),
        };
        let unclear = || Invocation::Unclear { arg: s.to_string() };
        let slot = match name {
            "--bundle" => &mut bundle,
            "-b" if inline.is_none() => &mut bundle,
            "--config" => &mut config,
            "-f" if inline.is_none() => &mut config,
            n if n.starts_with("--b") && "--bundle".starts_with(n) => return unclear(),
            n if n.len() >= 6 && "--config".starts_with(n) => return unclear(),
            n if n.starts_with("-b") || n.starts_with("-f") => return unclear(),
            _ => continue,
        };
        *slot = match inline {
            Some(v) => Some(v),
            None => Some(PathBuf::from(rest.next().cloned().unwrap_or_default())),
        };
    }
    let bundle = bundle.unwrap_or_else(|| PathBuf::from("."));
    Invocation::Create {
        command,
        config: config.unwrap_or_else(|| bundle.join("config.json")),
    }
}

/// The hook entry the wrapper adds.
pub fn hook_entry(keyward: &Path, opts: &Options) -> serde_json::Value {
    let mut args = vec![
        "keyward".to_string(),
        "hook".to_string(),
        "--socket".to_string(),
        opts.socket.to_string_lossy().into_owned(),
    ];
    if opts.fail_open {
        args.push("--fail-open".into());
    }
    serde_json::json!({
        "path": keyward.to_string_lossy(),
        "args": args,
        "timeout": HOOK_TIMEOUT_SECS,
    })
}

/// Whether [`add_hook`] changed the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    /// The same hook was there already (a retried create).
    AlreadyThere,
}

/// Append `hook` to `createRuntime` in the runtime config at `path`,
/// keeping every other field as it was. The file is replaced by rename,
/// with its mode, so the runtime never reads half of it.
pub fn add_hook(path: &Path, hook: &serde_json::Value) -> Result<Added, RuntimeError> {
    let path = path.to_path_buf();
    let (mut spec, meta) = oci::read_config::<serde_json::Value>(&path)?;
    let Some(obj) = spec.as_object_mut() else {
        return Err(RuntimeError::BadHooks { path });
    };
    let hooks = obj.entry("hooks").or_insert_with(|| serde_json::json!({}));
    if hooks.is_null() {
        *hooks = serde_json::json!({});
    }
    let Some(stage) = hooks.as_object_mut().map(|h| {
        h.entry("createRuntime")
            .or_insert_with(|| serde_json::json!([]))
    }) else {
        return Err(RuntimeError::BadHooks { path });
    };
    if stage.is_null() {
        *stage = serde_json::json!([]);
    }
    let Some(list) = stage.as_array_mut() else {
        return Err(RuntimeError::BadHooks { path });
    };
    if list.contains(hook) {
        return Ok(Added::AlreadyThere);
    }
    list.push(hook.clone());
    // A Value that was just parsed always serializes; were it not to, the
    // write fails and says so.
    let out = serde_json::to_vec(&spec).map_err(|e| RuntimeError::WriteConfig {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_replacing(&path, &out, meta.permissions().mode())?;
    Ok(Added::Added)
}

/// Write `bytes` to a sibling of `path`, then rename it over `path`.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RuntimeError> {
    let err = |source| RuntimeError::WriteConfig {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".keyward.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The real runtime's path: `runtime` itself if it names a path, else the
/// first executable of that name in `path_var` (or [`FALLBACK_PATH`]).
pub fn resolve_runtime(runtime: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, RuntimeError> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if runtime.as_bytes().contains(&b'/') {
        let p = PathBuf::from(runtime);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(RuntimeError::RuntimeNotFound {
                runtime: runtime.to_os_string(),
                path: p.display().to_string(),
            })
        };
    }
    let search = path_var
        .filter(|p| !p.is_empty())
        .unwrap_or(OsStr::new(FALLBACK_PATH));
    std::env::split_paths(search)
        .map(|dir| dir.join(runtime))
        .find(|p| executable(p))
        .ok_or_else(|| RuntimeError::RuntimeNotFound {
            runtime: runtime.to_os_string(),
            path: search.to_string_lossy().into_owned(),
        })
}

/// The value of the runtime's `--log FILE` when `--log-format json` is
/// given too: where containerd's shim reads the runtime's last error, so a
/// failed create reports keyward's reason and not only an exit status.
pub fn json_log(args: &[OsString]) -> Option<PathBuf> {
    let mut log = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.as_bytes();
        if COMMANDS.contains(&a.to_string_lossy().as_ref()) {
            break;
        }
        match s {
            b"--log" => log = it.next().map(PathBuf::from),
            b"--log-format" => json = it.next().is_some_and(|v| v == "json"),
            b"--log-format=json" => json = true,
            _ => {
                if let Some(v) = s.strip_prefix(b"--log=") {
                    log = Some(PathBuf::from(OsStr::from_bytes(v)));
                }
            }
        }
    }
    log.filter(|_| json)
}

/// Append an error to the runtime's JSON log in runc's own format.
pub fn log_error(log: &Path, message: &str) {
    let line = serde_json::json!({"level": "error", "msg": message});
    // The runtime creates this file itself; failing first, we must.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// What [`prepare`] decided.
#[derive(Debug)]
pub struct Prepared {
    /// The real runtime to execute.
    pub runtime: PathBuf,
    /// A warning to print (the hook could not be added and `--fail-open`
    /// let the container start unwatched).
    pub warning: Option<String>,
}

/// Everything before the exec: classify the command line, add the hook for a
/// create, resolve the real runtime. `keyward` is this binary's path (what
/// the hook entry runs).
pub fn prepare(
    opts: &Options,
    args: &[OsString],
    keyward: &Path,
    path_var: Option<&OsStr>,
) -> Result<Prepared, RuntimeError> {
    let runtime = resolve_runtime(&opts.runtime, path_var)?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&runtime, keyward) {
        return Err(RuntimeError::RuntimeIsSelf { runtime });
    }
    let added = match classify(args) {
        Invocation::Create { config, .. } => {
            add_hook(&config, &hook_entry(keyward, opts)).map(Some)
        }
        Invocation::Unclear { arg } => Err(RuntimeError::UnclearBundle { arg }),
        Invocation::PassThrough => Ok(None),
    };
    let warning = match added {
        Ok(_) => None,
        Err(e) if opts.fail_open => Some(format!(
            "{e}; the container starts without keyward (--fail-open)"
        )),
        Err(e) => return Err(e),
    };
    Ok(Prepared { runtime, warning })
}

/// Run the wrapper: prepare, then replace this process with the real
/// runtime. Returns only on failure, having written the reason to the
/// runtime's JSON log when it has one.
pub fn run(args: Vec<OsString>) -> RuntimeError {
    let Err(err) = exec_runtime(args.clone());
    if let Some(log) = json_log(&args) {
        log_error(&log, &format!("keyward: {err}"));
    }
    err
}

fn exec_runtime(args: Vec<OsString>) -> Result<std::convert::Infallible, RuntimeError> {
    if std::env::var_os(WRAPPED_ENV).is_some() {
        return Err(RuntimeError::Reentered);
    }
    let (opts, rest) = parse_args(args, Options::from_env(|k| std::env::var_os(k)))?;
    let keyward = std::env::current_exe().map_err(RuntimeError::SelfExe)?;
    let path_var = std::env::var_os("PATH");
    let prepared = prepare(&opts, &rest, &keyward, path_var.as_deref())?;
    if let Some(w) = &prepared.warning {
        eprintln!("keyward: warning: {w}");
    }
    // exec(2) keeps every inherited descriptor (the console socket,
    // `--preserve-fds`, the shim's pipes) and the environment.
    // Runtimes run hooks with the hook's own environment only, so the
    // marker reaches neither `keyward hook` nor the container.
    let source = std::process::Command::new(&prepared.runtime)
        .args(&rest)
        .env(WRAPPED_ENV, "1")
        .exec();
    Err(RuntimeError::Exec {
        runtime: prepared.runtime,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn defaults() -> Options {
        Options::from_env(|_| None)
    }

    #[test]
    fn keyward_options_come_first_and_stop_at_the_runtime_line() {
        let (o, rest) = parse_args(
            os(&[
                "--socket",
                "/s.sock",
                "--runtime=crun",
                "--fail-open",
                "--root",
                "/r",
                "create",
                "--bundle",
                "/b",
                "id",
            ]),
            defaults(),
        )
        .unwrap();
        assert_eq!(o.socket, PathBuf::from("/s.sock"));
        assert_eq!(o.runtime, "crun");
        assert!(o.fail_open);
        assert_eq!(
            rest,
            os(&["--root", "/r", "create", "--bundle", "/b", "id"])
        );
        // After `--` nothing is keyward's, even a runtime option named alike.
        let (o, rest) =
            parse_args(os(&["--", "--socket", "x", "state", "id"]), defaults()).unwrap();
        assert_eq!(o, defaults());
        assert_eq!(rest, os(&["--socket", "x", "state", "id"]));
        assert!(matches!(
            parse_args(os(&["--socket"]), defaults()),
            Err(RuntimeError::MissingValue("--socket"))
        ));
        assert!(matches!(
            parse_args(os(&["--socket="]), defaults()),
            Err(RuntimeError::MissingValue("--socket"))
        ));
        assert!(matches!(
            parse_args(os(&["--fail-open"]), defaults()),
            Err(RuntimeError::NoCommand)
        ));
    }

    #[test]
    fn environment_gives_the_defaults() {
        let o = Options::from_env(|k| match k {
            "KEYWARD_SOCKET" => Some("/e.sock".into()),
            "KEYWARD_RUNTIME" => Some("".into()),
            _ => None,
        });
        assert_eq!(o.socket, PathBuf::from("/e.sock"));
        assert_eq!(o.runtime, "runc", "an empty variable is unset");
    }

    #[test]
    fn commands_and_bundles_as_docker_and_containerd_pass_them() {
        // What dockerd 20.10 ran through containerd's shim on this machine.
        let docker = os(&[
            "--root",
            "/x/exec/runtime-runc/moby",
            "--log",
            "/s/moby/ID/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/s/moby/ID",
            "--pid-file",
            "/s/moby/ID/init.pid",
            "ID",
        ]);
        assert_eq!(
            classify(&docker),
            Invocation::Create {
                command: "create".into(),
                config: "/s/moby/ID/config.json".into()
            }
        );
        assert_eq!(
            json_log(&docker),
            Some(PathBuf::from("/s/moby/ID/log.json"))
        );
        for (line, config) in [
            (&["run", "-b", "/b", "id"][..], "/b/config.json"),
            (
                &["--debug", "--systemd-cgroup", "run", "--bundle=/b2", "id"],
                "/b2/config.json",
            ),
            (
                &["--rootless", "create", "--bundle", "/b3", "id"],
                "/b3/config.json",
            ),
            (&["--unknown-flag", "v", "create", "id"], "./config.json"),
            (
                &["restore", "--image-path", "/img", "-b", "/b4", "id"],
                "/b4/config.json",
            ),
            // crun's --config replaces the bundle's config.json.
            (
                &["create", "--bundle", "/b5", "--config", "/c.json", "id"],
                "/c.json",
            ),
            (&["run", "-f", "/c2.json", "id"], "/c2.json"),
            (&["run", "id", "--config=/c3.json"], "/c3.json"),
            // A value that is a command name: either reading is a create.
            (
                &["--root", "start", "create", "-b", "/b6", "id"],
                "/b6/config.json",
            ),
            (
                &["--rootless", "create", "--bundle", "/b7", "x"],
                "/b7/config.json",
            ),
        ] {
            match classify(&os(line)) {
                Invocation::Create { config: c, .. } => {
                    assert_eq!(c, PathBuf::from(config), "{line:?}")
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
        // Spellings runc and crun read differently are refused, not guessed.
        for line in [
            &["create", "-bundle", "/b", "id"][..],
            &["create", "-b=/b", "id"],
            &["create", "-b/b", "id"],
            &["create", "--bund", "/b", "id"],
            &["create", "--b=/b", "id"],
            &["create", "--conf", "/c.json", "id"],
            &["run", "-f/c.json", "id"],
        ] {
            assert!(
                matches!(classify(&os(line)), Invocation::Unclear { .. }),
                "{line:?}"
            );
        }
        for line in [
            &["--root", "/r", "start", "id"][..],
            &["exec", "--process", "/p.json", "id"],
            &["--log-format", "json", "state", "id"],
            &["events", "--stats", "id"],
            &["update", "--memory", "1m", "id"],
            &["checkpoint", "--image-path", "/i", "id"],
            &["features"],
            &["create", "--help"],
            &["--help", "create"],
            &["--version"],
            &[],
        ] {
            assert_eq!(classify(&os(line)), Invocation::PassThrough, "{line:?}");
        }
        assert_eq!(json_log(&os(&["--log", "/l", "create", "x"])), None);
        assert_eq!(
            json_log(&os(&["--log=/l", "--log-format=json", "create"])),
            Some("/l".into())
        );
    }

    #[test]
    fn hook_is_appended_once_and_everything_else_kept() {
        let tmp = crate::testdir::TempDir::new("runtime-hook");
        let dir = tmp.path();
        let cfg = dir.join("config.json");
        std::fs::write(
            &cfg,
            r#"{"ociVersion":"1.0.2","x-unknown":{"k":[1,2]},"hooks":{"prestart":[{"path":"/p"}],"createRuntime":[{"path":"/other"}]}}"#,
        )
        .unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
        let opts = Options {
            socket: "/t.sock".into(),
            runtime: "runc".into(),
            fail_open: true,
        };
        let hook = hook_entry(Path::new("/usr/bin/keyward"), &opts);
        assert_eq!(add_hook(&cfg, &hook).unwrap(), Added::Added);
        assert_eq!(add_hook(&cfg, &hook).unwrap(), Added::AlreadyThere);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        assert_eq!(v["x-unknown"]["k"][1], 2);
        assert_eq!(v["hooks"]["prestart"][0]["path"], "/p");
        let stage = v["hooks"]["createRuntime"].as_array().unwrap();
        assert_eq!(stage.len(), 2);
        assert_eq!(stage[0]["path"], "/other");
        assert_eq!(stage[1]["path"], "/usr/bin/keyward");
        assert_eq!(
            stage[1]["args"],
            serde_json::json!(["keyward", "hook", "--socket", "/t.sock", "--fail-open"])
        );
        assert_eq!(stage[1]["timeout"], HOOK_TIMEOUT_SECS);
        let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // No temporary file left beside it.
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);

        // No hooks at all, or a null stage.
        std::fs::write(
            &cfg,
            r#"{"ociVersion":"1.0.2","hooks":{"createRuntime":null}}"#,
        )
        .unwrap();
        add_hook(&cfg, &hook).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        assert_eq!(v["hooks"]["createRuntime"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn bad_bundles_are_errors_that_name_the_file() {
        let tmp = crate::testdir::TempDir::new("runtime-bad");
        let dir = tmp.path();
        let hook = hook_entry(Path::new("/k"), &defaults());
        let cfg = dir.join("config.json");
        let e = add_hook(&cfg, &hook).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::Config(OciError::ReadConfig { path, .. }) if *path == cfg),
            "{e}"
        );
        for (text, word) in [
            ("{bad", "malformed"),
            ("[1]", "hooks"),
            (r#"{"hooks":[]}"#, "hooks"),
            (r#"{"hooks":{"createRuntime":{}}}"#, "hooks"),
        ] {
            std::fs::write(dir.join("config.json"), text).unwrap();
            let e = add_hook(&cfg, &hook).unwrap_err().to_string();
            assert!(e.contains("config.json") && e.contains(word), "{text}: {e}");
            // The file is left as it was.
            assert_eq!(
                std::fs::read_to_string(dir.join("config.json")).unwrap(),
                text
            );
        }
    }

    #[test]
    fn prepare_fails_closed_unless_fail_open() {
        let tmp = crate::testdir::TempDir::new("runtime-prepare");
        let dir = tmp.path();
        let fake = dir.join("fake-runc");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut opts = Options {
            socket: "/t.sock".into(),
            runtime: fake.clone().into_os_string(),
            fail_open: false,
        };
        let keyward = Path::new("/usr/bin/keyward");
        let create = os(&[
            "create",
            "--bundle",
            dir.join("nobundle").to_str().unwrap(),
            "id",
        ]);
        let e = prepare(&opts, &create, keyward, None).unwrap_err();
        assert!(
            matches!(e, RuntimeError::Config(OciError::ReadConfig { .. })),
            "{e}"
        );
        opts.fail_open = true;
        let p = prepare(&opts, &create, keyward, None).unwrap();
        assert_eq!(p.runtime, fake);
        assert!(p.warning.unwrap().contains("without keyward"));
        // Pass-through commands touch no bundle.
        opts.fail_open = false;
        assert!(prepare(&opts, &os(&["state", "id"]), keyward, None).is_ok());
        // The real runtime must exist, and must not be keyward itself.
        opts.runtime = "no-such-runtime-xyz".into();
        let e = prepare(&opts, &os(&["state", "id"]), keyward, Some(dir.as_os_str())).unwrap_err();
        assert!(e.to_string().contains("no-such-runtime-xyz"), "{e}");
        opts.runtime = "fake-runc".into();
        let e = prepare(&opts, &os(&["state", "id"]), &fake, Some(dir.as_os_str())).unwrap_err();
        assert!(matches!(e, RuntimeError::RuntimeIsSelf { .. }), "{e}");
    }

    #[test]
    fn errors_reach_a_json_log() {
        let tmp = crate::testdir::TempDir::new("runtime-log");
        let log = tmp.path().join("log.json");
        // Not there yet: the runtime would have made it.
        log_error(&log, "keyward: x \"quoted\"");
        let line = std::fs::read_to_string(&log).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "keyward: x \"quoted\"");
    }
}
