//! The runtime wrapper's command line, as Docker, containerd or a shim
//! hands it over: keyward's own options, then the real runtime's, from
//! which the wrapper finds the command and the bundle's config file.
//!
//! Input: the arguments, NUL-separated (argv can hold any other byte).
//!
//! Properties: no panic; the wrapper's options are split off a prefix and
//! the runtime's arguments are the rest, never empty, unchanged; a create
//! is one of `create`, `run`, `restore` that is an argument; an unclear
//! bundle names an argument.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use keyward::hook::runtime::{self, Invocation, Options, RuntimeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect()
    };
    let defaults = Options::from_env(|_| None);
    match runtime::parse_args(args.clone(), defaults.clone()) {
        Ok((opts, rest)) => {
            assert!(!rest.is_empty());
            assert!(args.ends_with(&rest));
            assert!(!opts.runtime.is_empty());
            assert!(!opts.socket.as_os_str().is_empty());
        }
        Err(RuntimeError::NoCommand) | Err(RuntimeError::MissingValue(_)) => {}
        Err(e) => panic!("parse_args failed with {e}"),
    }
    let lossy: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match runtime::classify(&args) {
        Invocation::Create { command, config } => {
            assert!(["create", "run", "restore"].contains(&command.as_str()));
            assert!(lossy.contains(&command));
            let _ = config;
        }
        Invocation::Unclear { arg } => assert!(lossy.contains(&arg), "{arg}"),
        Invocation::PassThrough => {}
    }
});
