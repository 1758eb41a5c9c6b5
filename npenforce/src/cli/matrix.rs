//! `npenforce matrix` (placeholder until the policy compiler lands).

/// Arguments of `npenforce matrix`.
#[derive(Debug, clap::Args)]
pub struct MatrixArgs {}

/// Runs the command; returns the process exit status.
pub fn run(_args: &MatrixArgs) -> anyhow::Result<i32> {
    anyhow::bail!("npenforce matrix is not implemented yet")
}
