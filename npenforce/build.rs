//! Embeds the eBPF object that `cargo xtask build-ebpf` writes to `target/ebpf/`.
//!
//! When it has not been built, an empty placeholder is embedded instead so that plain
//! `cargo build`/`cargo test` work on stable without bpf-linker; loading then fails with a
//! message that says to run `cargo xtask build-ebpf`.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object_dir = manifest_dir.join("../target/ebpf");
    let object = object_dir.join("npenforce.bpf.o");
    // Watch the folder rather than the file: a missing file would make cargo rerun this script
    // (and rebuild the crate) on every build. xtask writes the object by rename, which changes
    // the folder.
    let _ = fs::create_dir_all(&object_dir);
    println!("cargo:rerun-if-changed={}", object_dir.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("npenforce.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("writing the embedded eBPF object into OUT_DIR");
}
