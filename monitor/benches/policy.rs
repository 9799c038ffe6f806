//! Policy compiler benchmark: compile time for 10, 100 and 1,000 globs, the
//! size of the resulting kernel table, and the walker's cost per path.
//!
//! Run: `cargo bench -p monitor --bench policy`. Table sizes (and the
//! comparison with one DFA per action) are printed before the timings.

use std::{hint::black_box, path::PathBuf, time::Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monitor::policy::{
    compile,
    compile::{build_dfa, ExpandedPattern},
    walk, CompileContext, Policy,
};

/// `n` realistic globs: file names and extensions at any depth, home
/// dot-directories, `/etc` configs, `**/x/**` subtrees, classes and
/// alternatives.
fn globs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 8 {
            0 => format!("**/secret{i}.txt"),
            1 => format!("**/*.ext{i}"),
            2 => format!("~/.tool{i}/**"),
            3 => format!("/etc/app{i}/*.conf"),
            4 => format!("config{i}/**/*.json"),
            5 => format!("**/.cache{i}/**"),
            6 => format!("**/.env.{i}"),
            _ => format!("build{i}/[a-c]*.{{key,pem}}"),
        })
        .collect()
}

fn policy_text(n: usize) -> String {
    let list = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let exec: Vec<String> = (0..n.div_ceil(10)).map(|i| format!("**/tool{i}")).collect();
    format!(
        "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [{}]\n\
         allow_read = [\"**/.env.example\", \"**/public/**\"]\n[exec]\ndeny = [{}]\n",
        list(globs(n)),
        list(exec)
    )
}

fn ctx() -> CompileContext {
    CompileContext {
        workspace: PathBuf::from("/home/dev/src/project"),
        home: PathBuf::from("/home/dev"),
        writable_roots: vec![PathBuf::from("/tmp/agent")],
    }
}

fn load(n: usize) -> Policy {
    Policy::parse(&format!("bench-{n}.toml"), &policy_text(n), None)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sizes of the single multi-pattern DFA against one DFA per verdict bit.
fn report_sizes() {
    println!("globs | states | classes | cells | table bytes used | compile ms | states with one DFA per action (sum)");
    for n in [10, 100, 1000] {
        let p = load(n);
        let t = Instant::now();
        let c = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut separate = 0;
        for bit in [1u8, 2, 4, 8, 16] {
            let only: Vec<ExpandedPattern> = c
                .patterns
                .iter()
                .filter(|x| x.bit == bit)
                .cloned()
                .collect();
            if !only.is_empty() {
                let (_, s) = build_dfa("bench", &only).unwrap_or_else(|e| panic!("{e}"));
                separate += s.states;
            }
        }
        let s = c.stats;
        println!(
            "{n:5} | {:6} | {:7} | {:6} | {:16} | {ms:10.1} | {separate}",
            s.states, s.classes, s.cells, s.used_bytes
        );
    }
}

fn paths() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &b"/home/dev/src/project/src/main.rs"[..],
        b"/home/dev/src/project/.env",
        b"/home/dev/src/project/target/debug/deps/libserde-1234.rlib",
        b"/usr/lib/x86_64-linux-gnu/libc.so.6",
        b"/home/dev/.tool2/state",
        b"/etc/app3/x.conf",
        b"/home/dev/src/project/a/b/c/d/e/f/g/h/i/j/k/.cache5/blob",
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect();
    let mut long = b"/home/dev/src/project".to_vec();
    while long.len() < 4000 {
        long.extend_from_slice(b"/deeply-nested-directory");
    }
    v.push(long);
    v
}

fn bench(c: &mut Criterion) {
    report_sizes();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for n in [10, 100, 1000] {
        let p = load(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &p, |b, p| {
            b.iter(|| compile(black_box(p), &ctx()).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("walk");
    for n in [10, 1000] {
        let compiled = compile(&load(n), &ctx()).unwrap_or_else(|e| panic!("{e}"));
        for p in paths() {
            g.throughput(Throughput::Bytes(p.len() as u64));
            let id = format!("{n}globs/{}B", p.len());
            g.bench_with_input(BenchmarkId::from_parameter(id), &p, |b, p| {
                b.iter(|| walk(black_box(&compiled.dfa), black_box(p)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
