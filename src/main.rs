//! The `keyward` binary: parse arguments, call the library, map errors to
//! exit codes (0 ok, 1 failure or "would not alert" for `check`, 2 usage).

use std::ffi::OsString;
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
    },
    /// List the containers the daemon watches.
    Containers {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the rule packs in effect: ids, severity, MITRE ids, archivers
    /// and path patterns.
    Rules {
        #[arg(long)]
        config: Option<PathBuf>,
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
        Command::Status { socket, config } => {
            let reply = ask(socket_of(socket, config)?, Request::Status)?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        Command::Containers { socket, config } => {
            if let Reply::Containers { containers } =
                ask(socket_of(socket, config)?, Request::Containers)?
            {
                println!("{}", serde_json::to_string_pretty(&containers)?);
            }
        }
        Command::Rules { config } => {
            let cfg = Config::load(config.as_deref())?;
            let rules = keyward::rules::Rules::compile(&cfg.rules)?;
            println!("{}", serde_json::to_string_pretty(&rules.summaries())?);
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyward: {}", chain_message(&e));
            ExitCode::from(1)
        }
    }
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
}
