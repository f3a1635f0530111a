//! The control socket: request lines the daemon reads from the hook and
//! the CLI, the reply lines they read back, and the registration checks
//! the daemon runs on what a request carries (id, response annotation,
//! name, image and pod annotations).
//!
//! Input: a byte stream, read line by line as the daemon reads it; every
//! line is parsed both as a request and as a reply.
//!
//! Properties: no panic; a line never holds its newline nor exceeds
//! `MAX_MESSAGE`; the lines read never add up to more than the input;
//! whatever parses survives `write_message` and back unchanged; an
//! accepted id is non-empty, bounded and free of `/` and control
//! characters; the response annotation may lower the host's action only
//! where `may_lower` says so, and is `Absent` exactly when it is missing;
//! pod names are cleaned.
#![no_main]

use std::io::BufReader;

use keyward::config::Action;
use keyward::hook::protocol::{self, MAX_MESSAGE, Reply, Request};
use keyward::registry::verify::{self, AnnotationOutcome, RESPONSE_ANNOTATION};
use libfuzzer_sys::fuzz_target;

const ACTIONS: [Action; 5] = [
    Action::Alert,
    Action::Deny,
    Action::Kill,
    Action::Stop,
    Action::Disconnect,
];

fn round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = Vec::new();
    protocol::write_message(&mut buf, msg).expect("a parsed message writes");
    let line = protocol::read_line(&mut BufReader::new(&buf[..])).expect("a written line reads");
    serde_json::from_slice(&line).expect("a written message parses")
}

fn check_registration(r: &protocol::Registration) {
    if verify::check_id(&r.id).is_ok() {
        assert!(!r.id.is_empty() && r.id.len() <= 1024);
        assert!(!r.id.chars().any(|c| c.is_control() || c == '/'));
    }
    for default in ACTIONS {
        for may_lower in [false, true] {
            match verify::action_for(&r.id, &r.annotations, default, may_lower) {
                Ok((action, AnnotationOutcome::Absent)) => {
                    assert!(!r.annotations.contains_key(RESPONSE_ANNOTATION));
                    assert_eq!(action, default);
                }
                Ok((action, AnnotationOutcome::Applied(asked))) => {
                    assert_eq!(action, asked);
                    assert!(may_lower || asked.strength() >= default.strength());
                }
                Ok((action, AnnotationOutcome::Refused { asked })) => {
                    assert_eq!(action, default);
                    assert!(!may_lower && asked.strength() < default.strength());
                }
                Err(e) => {
                    assert!(r.annotations.contains_key(RESPONSE_ANNOTATION));
                    assert!(e.to_string().contains(RESPONSE_ANNOTATION), "{e}");
                }
            }
        }
    }
    let (name, image) = verify::name_and_image(&r.annotations);
    for v in [name, image].into_iter().flatten() {
        assert!(!v.is_empty());
        assert!(r.annotations.values().any(|a| *a == v));
    }
    if let Some(pod) = verify::pod_of(&r.annotations) {
        assert!(pod.namespace.is_some() || pod.name.is_some());
        for v in [pod.namespace, pod.name].into_iter().flatten() {
            assert!(!v.is_empty() && v.len() <= 1024);
            assert!(!v.chars().any(char::is_control));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = BufReader::new(data);
    let mut consumed = 0usize;
    while let Ok(line) = protocol::read_line(&mut r) {
        assert!(line.len() <= MAX_MESSAGE);
        assert!(!line.contains(&b'\n'));
        consumed += line.len() + 1;
        assert!(consumed <= data.len());
        if let Ok(req) = protocol::parse_request(&line) {
            assert_eq!(round_trip(&req), req);
            if let Request::Register(reg) = &req {
                check_registration(reg);
            }
        }
        if let Ok(reply) = serde_json::from_slice::<Reply>(&line) {
            assert_eq!(round_trip(&reply), reply);
        }
    }
});
