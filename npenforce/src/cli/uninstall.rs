//! `npenforce uninstall`: detach and unpin everything the agent left under its bpffs folder.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `npenforce uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The agent's bpffs folder (its `--bpffs`).
    #[arg(
        long,
        env = "NPENFORCE_BPFFS",
        value_name = "DIR",
        default_value = crate::agent::args::DEFAULT_BPFFS
    )]
    pub bpffs: PathBuf,
}

pub fn run(args: &UninstallArgs) -> anyhow::Result<i32> {
    let removed = crate::dataplane::pins::uninstall(&args.bpffs)
        .with_context(|| format!("removing {}", args.bpffs.display()))?;
    // Kernels without TCX: the programs run as clsact filters, which cannot be pinned.
    let filters = crate::dataplane::loader::detach_clsact_filters()
        .context("removing clsact filters (listing interfaces)")?;
    println!(
        "npenforce uninstalled from {}: {} links detached, {filters} clsact filters removed, \
         {} programs and {} maps unpinned",
        args.bpffs.display(),
        removed.links,
        removed.programs,
        removed.maps
    );
    Ok(0)
}
