//! The agent's runtime on an in-memory enforcer, fed by a source under test.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use npenforce::agent::{AgentHandle, MemoryEnforcer, Runtime, RuntimeConfig, RuntimeError};
use npenforce::policy::NodeScope;
use npenforce::source::SourceEvent;
use npenforce_common::ip_proto;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The name of the node the test agent enforces.
pub const NODE: &str = "node-1";
/// The node's own address (always allowed).
pub const NODE_IP: &str = "172.18.0.2";

/// How long `eventually` waits.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct TestAgent {
    pub enforcer: MemoryEnforcer,
    pub handle: AgentHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<MemoryEnforcer, RuntimeError>>>,
}

impl TestAgent {
    /// Starts the runtime for node [`NODE`] on `events`, with an empty in-memory enforcer.
    pub fn start(events: mpsc::Receiver<SourceEvent>) -> TestAgent {
        TestAgent::start_with(events, MemoryEnforcer::new(), |_| {})
    }

    /// Starts the runtime with a given enforcer and config tweaks.
    pub fn start_with(
        events: mpsc::Receiver<SourceEvent>,
        enforcer: MemoryEnforcer,
        tweak: impl FnOnce(&mut RuntimeConfig),
    ) -> TestAgent {
        let node_ip: IpAddr = NODE_IP.parse().expect("node IP");
        let mut config = RuntimeConfig::new(
            NodeScope::Node(NODE.to_string()),
            Arc::new(move || Ok(vec![node_ip])),
        );
        tweak(&mut config);
        let (runtime, handle) = Runtime::new(config, enforcer.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(runtime.run(events, async move {
            let _ = stopped.await;
        }));
        TestAgent {
            enforcer,
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn wait_ready(&self) {
        assert!(
            self.handle.wait_for_revision(1, PATIENCE).await,
            "the agent did not become ready: {:#?}",
            self.handle.status()
        );
        assert!(self.handle.is_ready());
    }

    /// Whether TCP from `src` to `dst:port` is allowed by the enforced maps.
    pub fn allowed(&self, src: &str, dst: &str, port: u16) -> bool {
        let (s, d): (IpAddr, IpAddr) = (
            src.parse().expect("source IP"),
            dst.parse().expect("destination IP"),
        );
        self.enforcer.verdict(s, d, ip_proto::TCP, port).allowed()
    }

    /// Waits until every probe `(src, dst, port, allowed)` gets its expected verdict.
    pub async fn expect_verdicts(&self, what: &str, probes: &[(&str, &str, u16, bool)]) {
        let start = Instant::now();
        loop {
            let wrong: Vec<String> = probes
                .iter()
                .filter(|(s, d, p, want)| self.allowed(s, d, *p) != *want)
                .map(|(s, d, p, want)| {
                    format!(
                        "{s} -> {d}:{p} expected {}",
                        if *want { "allowed" } else { "blocked" }
                    )
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: wrong verdicts after {PATIENCE:?}: {wrong:#?}\nstatus: {:#?}",
                self.handle.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks that the verdicts hold the whole time for `duration`.
    pub async fn expect_steady(
        &self,
        what: &str,
        probes: &[(&str, &str, u16, bool)],
        duration: Duration,
    ) {
        let start = Instant::now();
        while start.elapsed() < duration {
            for (s, d, p, want) in probes {
                assert_eq!(
                    self.allowed(s, d, *p),
                    *want,
                    "{what}: {s} -> {d}:{p} changed after {:?}",
                    start.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `f` holds for the status.
    pub async fn eventually_status(
        &self,
        what: &str,
        f: impl Fn(&npenforce::agent::Status) -> bool,
    ) {
        let start = Instant::now();
        while !f(&self.handle.status()) {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: status after {PATIENCE:?}: {:#?}",
                self.handle.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the runtime; returns its enforcer.
    pub async fn stop(mut self) -> MemoryEnforcer {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task.take().expect("running");
        task.await
            .expect("the runtime did not panic")
            .expect("the runtime stopped cleanly")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
