//! The `npenforce` binary: agent, offline policy tools and the lab demo.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use npenforce::cli;

#[derive(Parser)]
#[command(
    name = "npenforce",
    version,
    about = "Kubernetes NetworkPolicy enforcement with eBPF",
    long_about = "npenforce enforces Kubernetes NetworkPolicy in the kernel with TC eBPF programs.\n\n\
                  `agent` runs the enforcer on a node (following the Kubernetes API or a folder \
                  of manifests). Offline tools (`check`, `matrix`) evaluate policies from a \
                  folder of manifests without a cluster. `demo` builds a throwaway lab of network \
                  namespaces on this machine, runs the agent in it and walks through every public \
                  NetworkPolicy recipe with real packets."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Would traffic from one pod to another be allowed? Prints the verdict and why.
    /// Exit status: 0 allowed, 1 denied, 2 error.
    Check(cli::check::CheckArgs),
    /// Print the reachability truth table between all pods of a manifests folder.
    Matrix(cli::matrix::MatrixArgs),
    /// Run the enforcement agent on this node (root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON).
    Agent(npenforce::agent::AgentArgs),
    /// Remove everything the agent attached and pinned under its bpffs folder (enforcement
    /// stops).
    Uninstall(cli::uninstall::UninstallArgs),
    /// Run the recipe demo (root): a lab of network namespaces on this machine, the agent
    /// enforcing in it, and every public NetworkPolicy recipe probed with real packets.
    Demo(cli::demo::DemoArgs),
}

fn run_agent(args: &npenforce::agent::AgentArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let options = npenforce::dataplane::NodeOptions::from_agent_args(args);
    let node = npenforce::dataplane::NodeDataplane::start(&options)
        .context("starting the dataplane (loading, pinning and attaching the eBPF programs)")?;
    npenforce::agent::run(args, node)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match &args.command {
        Command::Check(a) => cli::check::run(a),
        Command::Matrix(a) => cli::matrix::run(a),
        Command::Agent(a) => run_agent(a),
        Command::Uninstall(a) => cli::uninstall::run(a),
        Command::Demo(a) => cli::demo::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
        Err(err) => {
            eprintln!("npenforce: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
