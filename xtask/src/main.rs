//! Developer commands. Run from anywhere in the repository as `cargo xtask <command>`.
//!
//! These are the single source of truth for building and testing: README, CI (`.ci/run`) and
//! the container image (`deploy/Dockerfile`) all call them.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod setup;

/// Nightly toolchain used only for the eBPF crate (see shared TOOLCHAIN.md); the container
/// build names its pinned nightly through this variable.
const NIGHTLY_ENV: &str = "NPENFORCE_EBPF_TOOLCHAIN";

pub(crate) fn nightly() -> String {
    std::env::var(NIGHTLY_ENV).unwrap_or_else(|_| "nightly".to_owned())
}
const EBPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Parser)]
#[command(about = "npenforce developer commands", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need on a Debian machine (apt packages, rust-src for
    /// the nightly toolchain, bpf-linker built against LLVM 22). Does nothing when all is there.
    Setup,
    /// Build the eBPF object (release, with BTF) for bpfel-unknown-none.
    BuildEbpf,
    /// Build the eBPF object and the npenforce binary that embeds it.
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Run every check and test: fmt, clippy, unit, kernel and lab tests (root needed for the
    /// last two), shellcheck of deploy scripts, and a check that nothing is left behind.
    Test {
        /// Extra arguments passed to `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Build everything and run the lab demo (root needed: it creates network namespaces).
    Demo,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => {
            setup::run()?;
            build_ebpf()
        }
        Cmd::Build { release } => {
            setup::run()?;
            build_ebpf()?;
            build_agent(release)
        }
        Cmd::Test { cargo_args } => test(&cargo_args),
        Cmd::Demo => {
            setup::run()?;
            build_ebpf()?;
            build_agent(false)?;
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            let bin = target.join("debug/npenforce");
            run_cmd(Command::new(bin).arg("demo"), "npenforce demo")
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where the agent's build script picks the eBPF object up.
fn ebpf_object_path() -> PathBuf {
    workspace_root().join("target/ebpf/npenforce.bpf.o")
}

/// A cargo command without the variables that the outer `cargo xtask` (stable) sets, so the
/// inner build picks its own toolchain.
fn clean_cargo(toolchain: Option<&str>) -> Command {
    let mut cmd = Command::new("cargo");
    if let Some(toolchain) = toolchain {
        cmd.arg(format!("+{toolchain}"));
    }
    for var in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(workspace_root());
    cmd
}

fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    // The same flags aya-build passes: the target arch for aya-ebpf's cfg, and debug info
    // plus `--btf` so the object carries BTF for aya's relocations.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let target_dir = root.join("target");
    let mut cmd = clean_cargo(Some(&nightly()));
    cmd.current_dir(root.join("npenforce-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    run_cmd(&mut cmd, "eBPF build")?;

    let built = target_dir.join(EBPF_TARGET).join("release/npenforce-ebpf");
    let dest = ebpf_object_path();
    let dir = dest.parent().expect("object path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Copy then rename, so the agent's build script never sees a half-written object.
    let tmp = dest.with_extension("o.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    println!("xtask: eBPF object at {}", dest.display());
    Ok(())
}

fn build_agent(release: bool) -> Result<()> {
    let mut cmd = clean_cargo(None);
    cmd.args(["build", "--package", "npenforce"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd, "agent build")
}

fn test(cargo_args: &[String]) -> Result<()> {
    setup::run()?;
    run_cmd(
        clean_cargo(None).args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    build_ebpf()?;
    run_cmd(
        clean_cargo(None).args(["clippy", "--all-targets", "--", "-D", "warnings"]),
        "cargo clippy",
    )?;
    let is_root = nix_is_root();
    if !is_root {
        eprintln!(
            "xtask: WARNING: not root: kernel and lab tests will skip (they load eBPF programs \
             and create network namespaces). Run as root to run them."
        );
    }
    let mut cmd = clean_cargo(None);
    cmd.args(["test", "--workspace", "--exclude", "npenforce-ebpf"])
        .args(cargo_args);
    if is_root {
        // As root, a kernel test that cannot run is a failure, not a skip.
        cmd.env("NPENFORCE_REQUIRE_KERNEL_TESTS", "1");
    }
    run_cmd(&mut cmd, "cargo test")?;
    shellcheck_deploy()?;
    if is_root {
        check_nothing_left_behind()?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn shellcheck_deploy() -> Result<()> {
    let mut scripts = Vec::new();
    collect_scripts(&workspace_root().join("deploy"), &mut scripts)?;
    if scripts.is_empty() {
        return Ok(());
    }
    scripts.sort();
    run_cmd(
        Command::new("shellcheck").args(&scripts),
        "shellcheck of deploy scripts",
    )?;
    println!("xtask: shellcheck clean on {} scripts", scripts.len());
    Ok(())
}

fn collect_scripts(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_scripts(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "sh") {
            out.push(path);
        }
    }
    Ok(())
}

/// The lab tests name everything they create with the `npe-` prefix and pin under
/// `/sys/fs/bpf/npe-*`; after a run none of it may remain.
fn check_nothing_left_behind() -> Result<()> {
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    let leftover_ns: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with("npe-"))
        .map(str::to_owned)
        .collect();
    let leftover_pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("npe-"))
                .collect()
        })
        .unwrap_or_default();
    // Tests pin into private bpffs mounts named npe-bpffs-* (lab::BpffsMount).
    let leftover_mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.contains("/npe-"))
        .map(str::to_owned)
        .collect();
    if !leftover_ns.is_empty() || !leftover_pins.is_empty() || !leftover_mounts.is_empty() {
        bail!(
            "tests left things behind: network namespaces {leftover_ns:?}, bpffs pins \
             {leftover_pins:?}, mounts {leftover_mounts:?}"
        );
    }
    println!("xtask: nothing left behind (no npe-* network namespaces, bpffs pins or mounts)");
    Ok(())
}

pub(crate) fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
