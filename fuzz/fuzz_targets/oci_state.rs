//! The OCI state a runtime writes on the hook's stdin, and the bundle's
//! `config.json`, as the hook turns them into a registration.
//!
//! Input: the state bytes, a NUL, then the config.json bytes (a raw NUL is
//! never valid JSON, so the split loses nothing). The filesystem is never
//! touched: the spec comes from the second half through
//! `oci::action_with`, the function `hook_action` calls.
//!
//! Properties: no panic; a state that parses yields either an error or an
//! action that agrees with it (the same id, never empty; deregister exactly
//! for `stopped`; a registration with the state's pid, a rootfs under the
//! bundle unless the spec's root is absolute, and every state annotation).
#![no_main]

use std::path::Path;

use keyward::hook::oci::BundleConfig;
use keyward::hook::oci::{self, HookAction};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::ContainerState;

fuzz_target!(|data: &[u8]| {
    let (state, config) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(state) = oci::read_state(state) else {
        return;
    };
    let mut spec_read = false;
    let action = oci::action_with(&state, |bundle| {
        spec_read = true;
        oci::parse_config::<BundleConfig>(&bundle.join("config.json"), config)
    });
    let Ok(action) = action else {
        return;
    };
    match action {
        HookAction::Deregister { id } => {
            assert_eq!(*state.status(), ContainerState::Stopped);
            assert_eq!(&id, state.id());
            assert!(!id.is_empty());
            assert!(!spec_read, "a deregistration never reads the bundle");
        }
        HookAction::Register(r) => {
            assert_ne!(*state.status(), ContainerState::Stopped);
            assert_eq!(&r.id, state.id());
            assert!(!r.id.is_empty());
            assert_eq!(Some(r.pid), *state.pid());
            assert_eq!(&r.bundle, state.bundle());
            assert!(!r.bundle.as_os_str().is_empty());
            assert!(spec_read);
            let spec: BundleConfig = oci::parse_config(Path::new("config.json"), config).unwrap();
            let root_absolute = spec.root.as_ref().is_some_and(|r| r.path.is_absolute());
            if !root_absolute {
                assert!(r.rootfs.starts_with(&r.bundle), "{r:?}");
            }
            // The state's annotations win over the spec's.
            for (k, v) in state.annotations().iter().flatten() {
                assert_eq!(r.annotations.get(k), Some(v));
            }
            // And nothing is invented.
            for k in r.annotations.keys() {
                let in_state = state
                    .annotations()
                    .as_ref()
                    .is_some_and(|a| a.contains_key(k));
                let in_spec = spec.annotations.as_ref().is_some_and(|a| a.contains_key(k));
                assert!(in_state || in_spec, "{k}");
            }
        }
    }
});
