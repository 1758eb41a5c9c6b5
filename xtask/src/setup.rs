//! `cargo xtask setup`: installs what is missing, and nothing when all is present.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{nightly, run_cmd, workspace_root};

/// Debian packages: LLVM 22 (bpf-linker links against it), iproute2 and nftables for the lab,
/// shellcheck for the deploy scripts.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "nftables",
    "shellcheck",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    install_apt_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    Ok(())
}

fn install_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update"), "apt-get update")?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .arg(format!("+{}", nightly()))
        .args(["--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc +nightly --print sysroot (is the nightly toolchain installed?)")?;
    if !out.status.success() {
        bail!(
            "rustc +{} failed: {}",
            nightly(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn install_rust_src() -> Result<()> {
    let rustlib = nightly_sysroot()?.join("lib/rustlib");
    let core_src = rustlib.join("src/rust/library/core");
    if core_src.is_dir() {
        return Ok(());
    }
    let toolchain = nightly();
    println!("xtask setup: adding rust-src to the {toolchain} toolchain");
    let added = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", &toolchain])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if added && core_src.is_dir() {
        return Ok(());
    }
    // Offline fallback: the same component, shipped beside the repository.
    let tarball = workspace_root()
        .parent()
        .map(|p| p.join("shared/toolchain/rust-src-nightly.tar.xz"))
        .filter(|p| p.is_file())
        .context("rustup could not add rust-src and ../shared/toolchain/rust-src-nightly.tar.xz is not there")?;
    println!(
        "xtask setup: rustup failed; unpacking {} into {}",
        tarball.display(),
        rustlib.display()
    );
    run_cmd(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&rustlib),
        "unpacking rust-src",
    )?;
    if !core_src.is_dir() {
        bail!("rust-src still missing at {}", core_src.display());
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    println!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
    );
    // Debian's default LLVM is 14; point the build at LLVM 22, which matches the nightly's.
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env_remove("RUSTUP_TOOLCHAIN"),
        "cargo install bpf-linker",
    )
}
