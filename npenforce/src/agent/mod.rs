//! The agent daemon: a source ([`crate::source`]) feeds the incremental compiler, whose map
//! diffs an [`Enforcer`] writes to the kernel; HTTP endpoints report health, readiness,
//! metrics and status.
//!
//! ```text
//! source (kube | manifests) --SourceEvent--> Runtime (coalesce, compile) --MapDiff--> Enforcer
//!                                               |
//!                                               +--> AgentHandle --> /healthz /readyz /metrics /status
//! ```
//!
//! Shutdown (SIGTERM, SIGINT) stops the source, the endpoints and the loop, and drops the
//! enforcer without detaching or unpinning anything: the pinned programs and maps keep
//! enforcing the last applied state until the next agent adopts them
//! ([`Enforcer::reconcile`]).

pub mod args;
pub mod http;
pub mod memory;
pub mod runtime;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use args::{AgentArgs, PendingMode, SourceMode};
pub use memory::MemoryEnforcer;
pub use runtime::{AgentHandle, NodeAddresses, Runtime, RuntimeConfig, RuntimeError};
pub use status::Status;

use crate::policy::{MapDiff, MapEntries};
use crate::source::manifests_watch::{ManifestsConfig, ManifestsSource, ManifestsWatchError};
use crate::source::{self, SourceEvent};

/// Writes compiled map content to the kernel (or anywhere else).
pub trait Enforcer: Send + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies a diff, in the order [`MapDiff`] documents (upserts before removals).
    fn apply(&mut self, diff: &MapDiff) -> Result<(), Self::Error>;

    /// Makes the maps equal to `desired`: used at start to adopt the state pinned by a
    /// previous agent, and to recover after a failed apply.
    fn reconcile(&mut self, desired: &MapEntries) -> Result<(), Self::Error>;

    /// More `/metrics` lines from the enforcer itself (kernel counters), rendered on each
    /// scrape.
    fn metrics_source(&self) -> Option<MetricsSource> {
        None
    }

    /// Pod ids by address as the maps already hold them (pinned by a previous agent), so the
    /// first compile keeps them.
    fn adopted_pod_ids(&self) -> Vec<(std::net::IpAddr, u32)> {
        Vec::new()
    }
}

/// Renders Prometheus text lines on demand.
pub type MetricsSource = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifests(#[from] ManifestsWatchError),
    #[error("cannot configure the Kubernetes client: {0}")]
    KubeConfig(#[from] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    KubeClient(#[from] kube::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the agent described by `args` with `enforcer` until `shutdown` completes.
///
/// `node_addresses` gives the node's own addresses (normally
/// `crate::dataplane::netlink::local_addresses`); tests inject their own.
pub async fn run_agent<E: Enforcer>(
    args: &AgentArgs,
    enforcer: E,
    node_addresses: NodeAddresses,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mode = args.source()?;
    let node = args.node_scope()?;
    let listener = http::bind(args.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: args.listen,
            source,
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<SourceEvent>(4096);
    let source_task = match &mode {
        SourceMode::Manifests(dir) => {
            let src = ManifestsSource::start(dir, ManifestsConfig::default())?;
            tracing::info!(dir = %dir.display(), ?node, "following a manifests folder");
            tokio::spawn(src.run(tx))
        }
        SourceMode::Kube => {
            let config = kube::Config::infer().await?;
            tracing::info!(cluster = %config.cluster_url, ?node, "following the Kubernetes API");
            let client = kube::Client::try_from(config)?;
            tokio::spawn(source::kube::run(
                client,
                source::kube::KubeSourceConfig::default(),
                tx,
            ))
        }
    };
    let (runtime, handle) = Runtime::new(RuntimeConfig::new(node, node_addresses), enforcer);
    tracing::info!(listen = %args.listen, "serving /healthz, /readyz, /metrics, /status");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(http::serve(listener, handle, async move {
        let _ = http_stopped.await;
    }));
    let result = runtime.run(rx, shutdown).await;
    source_task.abort();
    let _ = stop_http.send(());
    let _ = http_task.await;
    // Dropping the enforcer leaves the pinned state enforcing.
    result.map(drop).map_err(AgentError::from)
}

/// Builds the tokio runtime and runs the agent with `enforcer` until SIGTERM or SIGINT;
/// returns the exit status. The node's addresses come from
/// `dataplane::netlink::local_addresses`.
pub fn run<E: Enforcer>(args: &AgentArgs, enforcer: E) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let addresses: NodeAddresses = Arc::new(crate::dataplane::netlink::local_addresses);
    rt.block_on(run_agent(args, enforcer, addresses, shutdown_signal()))
        .context("agent failed")?;
    Ok(0)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot catch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
