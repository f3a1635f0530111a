//! The `keyward` binary: parse arguments, call the library, map errors to
//! exit codes (0 ok, 1 failure or "would not alert" for `check`, 2 usage).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use keyward::config::{Config, DEFAULT_SOCKET};
use keyward::hook::protocol::{Reply, Request};

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Stop credential theft by archivers inside containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads).
    Daemon {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// OCI hook for any stage: reads the state JSON on stdin.
    Hook {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Let the container start when the daemon is unreachable.
        #[arg(long)]
        fail_open: bool,
    },
    /// Ask the running daemon for its status and counters.
    Status {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// List the containers the daemon watches.
    Containers {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the rule packs in effect: ids, severity, MITRE ids, archivers
    /// and path patterns.
    Rules {
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print recent alerts from the alert file, one per line.
    Alerts {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The alert file (default: `[alerts] json` of the config).
        #[arg(long)]
        file: Option<PathBuf>,
        /// How many of the latest alerts to print.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing alerts as they are written (follows rotation).
        #[arg(short, long)]
        follow: bool,
        /// The ECS JSON lines as they are, instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// OCI runtime wrapper for Docker and containerd (packaging/docker/daemon.json).
    ///
    /// Adds the hook to the bundle on create, then runs the real runtime:
    /// keyward runtime [--socket PATH] [--runtime runc|crun|PATH]
    /// [--fail-open] [--] RUNTIME-ARGS...
    #[command(disable_help_flag = true)]
    Runtime {
        /// keyward's options, then the runtime's command line, unchanged.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Would this command line alert? Why? (No daemon needed.)
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// Also judge a file the process would write, as the behaviour
        /// rule does (by its magic number).
        #[arg(long)]
        wrote: Option<PathBuf>,
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
}

fn socket_of(socket: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    Ok(Config::load(config.as_deref())?.socket)
}

fn ask(socket: PathBuf, req: Request) -> Result<Reply> {
    let reply = keyward::hook::client::call(&socket, &req, std::time::Duration::from_secs(5))?;
    if let Reply::Error { message } = reply {
        bail!("daemon at {} said: {message}", socket.display());
    }
    Ok(reply)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon { config } => {
            keyward::daemon::run(config.as_deref()).context("keyward daemon failed")?;
        }
        Command::Hook { socket, fail_open } => {
            match keyward::hook::run(std::io::stdin().lock(), &socket, fail_open)? {
                keyward::hook::HookOutcome::FailedOpen { warning } => {
                    eprintln!("keyward: warning: {warning}");
                }
                keyward::hook::HookOutcome::Watching {
                    warning: Some(w), ..
                } => eprintln!("keyward: warning: {w}"),
                keyward::hook::HookOutcome::Watching { .. }
                | keyward::hook::HookOutcome::Deregistered { .. } => {}
            }
        }
        Command::Runtime { args } => {
            return Err(keyward::hook::runtime::run(args).into());
        }
        Command::Status {
            socket,
            config,
            json,
        } => {
            let reply = ask(socket_of(socket, config)?, Request::Status)?;
            match reply {
                Reply::Status(r) if !json => print!("{}", keyward::cli::status(&r)),
                other => println!("{}", serde_json::to_string_pretty(&other)?),
            }
        }
        Command::Containers {
            socket,
            config,
            json,
        } => {
            if let Reply::Containers { containers } =
                ask(socket_of(socket, config)?, Request::Containers)?
            {
                if json {
                    println!("{}", serde_json::to_string_pretty(&containers)?);
                } else {
                    print!("{}", keyward::cli::containers(&containers));
                }
            }
        }
        Command::Rules { config, json } => {
            let cfg = Config::load(config.as_deref())?;
            let rules = keyward::rules::Rules::compile(&cfg.rules)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules.summaries())?);
            } else {
                print!("{}", keyward::cli::rules(&rules.summaries()));
            }
        }
        Command::Alerts {
            config,
            file,
            lines,
            follow,
            json,
        } => {
            let path = match file {
                Some(f) => f,
                None => Config::load(config.as_deref())?
                    .alerts
                    .json
                    .context("the config has no [alerts] json file; name one with --file")?,
            };
            alerts(&path, lines, follow, json)?;
        }
        Command::Check {
            config,
            json,
            wrote,
            argv,
        } => {
            let cfg = Config::load(config.as_deref())?;
            let rules = keyward::rules::Rules::compile(&cfg.rules)?;
            let mut report = keyward::rules::check::check(&rules, &argv);
            report.behaviour = wrote
                .as_deref()
                .map(|w| keyward::rules::check::BehaviourCheck::of(&rules, w));
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if !report.alerts() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `keyward alerts`: the last `n` lines of the alert file, then, with
/// `follow`, every line appended (reopening the file when it is rotated or
/// truncated).
fn alerts(path: &std::path::Path, n: usize, follow: bool, json: bool) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let open =
        || std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()));
    let mut f = open()?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if json {
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(n)..] {
            println!("{l}");
        }
    } else {
        print!("{}", keyward::cli::alerts(&text, n));
    }
    if !follow {
        return Ok(());
    }
    let mut pos = text.len() as u64;
    let mut ino = f.metadata()?.ino();
    let mut partial = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // Rotated (a new inode at the path) or truncated: start over.
        if let Ok(m) = std::fs::metadata(path)
            && (m.ino() != ino || m.len() < pos)
            && let Ok(new) = open()
        {
            f = new;
            ino = m.ino();
            pos = 0;
            partial.clear();
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut more = String::new();
        let got = f.read_to_string(&mut more)?;
        pos += got as u64;
        partial.push_str(&more);
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if json {
                println!("{line}");
            } else {
                let row = match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(doc) => keyward::cli::alert_row(&doc).join("  "),
                    Err(e) => format!("unparsable line: {e}"),
                };
                println!("{row}");
            }
        }
    }
}

fn main() -> ExitCode {
    // Called through the `keyward-runtime` link (containerd's BinaryName,
    // `ctr run --runc-binary`), it is `keyward runtime`: only the runtime's
    // command line follows, unless keyward's own options lead.
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == keyward::hook::runtime::LINK_NAME)
    {
        let e = keyward::hook::runtime::run(argv.collect());
        eprintln!("keyward: {e}");
        return ExitCode::from(1);
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match hook_args(args.get(1..).unwrap_or_default()) {
        Some((socket, fail_open)) => Cli {
            command: Command::Hook { socket, fail_open },
        },
        None => Cli::parse_from(args),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyward: {}", chain_message(&e));
            ExitCode::from(1)
        }
    }
}

/// `hook [--socket PATH | --socket=PATH] [--fail-open]`, as runtimes call
/// it on every container start, parsed without building the parser of
/// every subcommand (a few percent of the hook process). Anything else,
/// help and mistakes included, is left to clap (`None`).
fn hook_args(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let (first, rest) = args.split_first()?;
    if first != "hook" {
        return None;
    }
    let (mut socket, mut fail_open) = (None, false);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let bytes = a.as_encoded_bytes();
        if a == "--fail-open" && !fail_open {
            fail_open = true;
        } else if a == "--socket" && socket.is_none() {
            socket = Some(PathBuf::from(it.next()?));
        } else if let Some(v) = bytes.strip_prefix(b"--socket=")
            && socket.is_none()
        {
            // SAFETY: the bytes after an ASCII prefix of an OsString are
            // still its own encoded bytes.
            socket = Some(PathBuf::from(unsafe {
                OsStr::from_encoded_bytes_unchecked(v)
            }));
        } else {
            return None;
        }
    }
    // A value that looks like an option is clap's to judge.
    if socket.as_ref().is_some_and(|s| {
        s.as_os_str().as_encoded_bytes().starts_with(b"-") || s.as_os_str().is_empty()
    }) {
        return None;
    }
    Some((
        socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        fail_open,
    ))
}

/// The error and its causes, joined by ": ". The library's errors already
/// quote their source in their own message (`cannot reach ... at PATH:
/// ENOENT`), so a cause whose text is already there is not repeated.
fn chain_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(keyward::hook::client::ClientError::Connect {
            socket: "/run/x.sock".into(),
            source: io,
        })
        .context("asking the daemon");
        assert_eq!(
            chain_message(&e),
            "asking the daemon: cannot reach keyward daemon at /run/x.sock: no such file"
        );
        // A cause the message does not quote is still shown.
        let e = anyhow::anyhow!("inner detail").context("outer");
        assert_eq!(chain_message(&e), "outer: inner detail");
    }

    /// The hook's fast path reads what clap reads, or leaves it to clap.
    #[test]
    fn the_hook_fast_path_agrees_with_clap() {
        let cases: &[&[&str]] = &[
            &["hook"],
            &["hook", "--fail-open"],
            &["hook", "--socket", "/run/k.sock"],
            &["hook", "--socket=/run/k.sock", "--fail-open"],
            &["hook", "--fail-open", "--socket", "/run/k.sock"],
            &["hook", "--socket"],
            &["hook", "--socket", "--fail-open"],
            &["hook", "--socket="],
            &["hook", "--fail-open", "--fail-open"],
            &["hook", "--socket", "/a", "--socket", "/b"],
            &["hook", "--help"],
            &["hook", "extra"],
            &["status"],
        ];
        for case in cases {
            let args: Vec<OsString> = case.iter().map(OsString::from).collect();
            let fast = hook_args(&args);
            let clap =
                Cli::try_parse_from(std::iter::once(OsString::from("keyward")).chain(args.clone()));
            match (&fast, clap.map(|c| c.command)) {
                (Some((s, f)), Ok(Command::Hook { socket, fail_open })) => {
                    assert_eq!((s, *f), (&socket, fail_open), "{case:?}");
                }
                (None, _) => {}
                (Some(_), _) => panic!("{case:?}: the fast path took what clap refuses"),
            }
        }
        assert!(
            hook_args(&[OsString::from("hook")]).is_some(),
            "the plain call is fast"
        );
    }
}
