//! `npenforce check` (placeholder until the policy compiler lands).

/// Arguments of `npenforce check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Runs the command; returns the process exit status.
pub fn run(_args: &CheckArgs) -> anyhow::Result<i32> {
    anyhow::bail!("npenforce check is not implemented yet")
}
