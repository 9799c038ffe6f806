//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is looked up at `$AGENTMON_EBPF_OBJECT`, else at
//! `<workspace>/target/bpf/bpfel-unknown-none/release/agentmon`. When it is
//! missing (a plain `cargo check` without bpf-linker), an empty object is
//! embedded and the daemon refuses to start with a message naming
//! `cargo xtask build`.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpf/bpfel-unknown-none/release/agentmon");
    println!("cargo:rerun-if-env-changed=AGENTMON_EBPF_OBJECT");
    let obj = env::var_os("AGENTMON_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-changed={}", obj.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("agentmon.bpf.o");
    match fs::read(&obj) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object not found at {}; embedding an empty one (run `cargo xtask build`)",
                obj.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}
