//! Rule matcher throughput: argv evaluations per second of
//! [`keyward::rules::Rules::match_exec`] and
//! [`keyward::rules::Rules::archiver_of`] with the default rule pack
//! ([`keyward::config::RulesConfig::default`]).
//!
//! Every exec in a watched container runs `match_exec` (exec loop) and every
//! credential open runs both (permission loop), so these are on the hot
//! path. The inputs are a realistic mix: three commands that match nothing
//! (`ls -l /app`, `python3 app.py --port 80`, a 40-argument compiler line)
//! and one that matches the seed rule (`tar czf x /root/.ssh/id_rsa`).
//! Criterion reports throughput in elements (= argv evaluations) per second;
//! the `mix` groups evaluate all four command lines per iteration.
//!
//! Run: `cargo bench --bench matcher`.

use std::ffi::{OsStr, OsString};
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyward::config::RulesConfig;
use keyward::rules::{Rules, basename};

/// One command line, as the daemon sees it: the process name and argv.
struct Cmd {
    label: &'static str,
    name: OsString,
    args: Vec<OsString>,
}

fn cmd(label: &'static str, args: &[&str]) -> Cmd {
    let name = OsStr::new(std::str::from_utf8(basename(args[0].as_bytes())).unwrap_or(args[0]));
    Cmd {
        label,
        name: name.to_os_string(),
        args: args.iter().map(OsString::from).collect(),
    }
}

fn long_command() -> Vec<String> {
    let mut v = vec!["/usr/bin/cc".to_string()];
    for i in 0..19 {
        v.push(format!("-I/usr/include/project/module{i}"));
        v.push(format!("src/module{i}/file{i}.c"));
    }
    v.push("-o".into());
    assert_eq!(v.len(), 40);
    v
}

fn commands() -> Vec<Cmd> {
    let long = long_command();
    let long_refs: Vec<&str> = long.iter().map(String::as_str).collect();
    vec![
        cmd("ls", &["ls", "-l", "/app"]),
        cmd("python", &["python3", "app.py", "--port", "80"]),
        cmd("cc_40_args", &long_refs),
        cmd("tar_match", &["tar", "czf", "x", "/root/.ssh/id_rsa"]),
    ]
}

fn bench(c: &mut Criterion) {
    let rules = Rules::compile(&RulesConfig::default()).expect("default rules compile");
    let cmds = commands();
    // Sanity: the mix is what it claims to be.
    for k in &cmds {
        let hit = rules.match_exec(&k.name, &k.args).is_some();
        assert_eq!(hit, k.label == "tar_match", "{}", k.label);
    }

    let mut g = c.benchmark_group("match_exec");
    g.throughput(Throughput::Elements(1));
    for k in &cmds {
        g.bench_function(k.label, |b| {
            b.iter(|| black_box(rules.match_exec(black_box(&k.name), black_box(&k.args))))
        });
    }
    g.throughput(Throughput::Elements(cmds.len() as u64));
    g.bench_function("mix", |b| {
        b.iter(|| {
            for k in &cmds {
                black_box(rules.match_exec(black_box(&k.name), black_box(&k.args)));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("archiver_of");
    g.throughput(Throughput::Elements(1));
    for k in &cmds {
        g.bench_function(k.label, |b| {
            b.iter(|| {
                black_box(rules.archiver_of(
                    black_box(&k.name),
                    black_box(&k.name),
                    black_box(&k.args),
                ))
            })
        });
    }
    g.throughput(Throughput::Elements(cmds.len() as u64));
    g.bench_function("mix", |b| {
        b.iter(|| {
            for k in &cmds {
                black_box(rules.archiver_of(
                    black_box(&k.name),
                    black_box(&k.name),
                    black_box(&k.args),
                ));
            }
        })
    });
    g.finish();

    // What the permission loop evaluates per held opener: the seed rule on
    // two names (exe basename and comm), then the file rule's archiver test
    // on the exe name and, failing that, on comm.
    let mut g = c.benchmark_group("per_open_rules");
    g.throughput(Throughput::Elements(cmds.len() as u64));
    g.bench_function("mix", |b| {
        b.iter(|| {
            for k in &cmds {
                let names = [k.name.as_os_str(), k.name.as_os_str()];
                black_box(rules.match_exec_names(black_box(&names), black_box(&k.args)));
                black_box(rules.archiver_of(&k.name, &k.name, &k.args));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
