//! A [`World`] built into the pod lab and enforced by the agent binary.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

use super::{
    agent::AgentProcess,
    external::{self, ExternalHost},
    http,
    world::{Endpoint, Probe, Source, Via, World},
};
use crate::lab::{BpffsMount, Lab, Outcome, Pod as LabPod, Protocol};

/// Where the agent listens, inside the node namespace (which has its own loopback).
pub const AGENT_LISTEN: &str = "127.0.0.1:9402";
/// How long a probe waits for an answer before calling the path blocked.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a change of the manifests folder may take to be applied.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A folder under /tmp, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("npe-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(path.join("manifests"))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What one probe saw, over IPv4 and IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub v4: Outcome,
    pub v6: Outcome,
}

impl Observed {
    /// Both families gave the expected verdict.
    pub fn matches(&self, allowed: bool) -> bool {
        let want = if allowed {
            Outcome::Allowed
        } else {
            Outcome::Blocked
        };
        self.v4 == want && self.v6 == want
    }

    /// `allowed`, `blocked`, or one verdict per family when they differ.
    pub fn summary(&self) -> String {
        if self.v4 == self.v6 {
            outcome_label(&self.v4)
        } else {
            format!(
                "v4 {} / v6 {}",
                outcome_label(&self.v4),
                outcome_label(&self.v6)
            )
        }
    }
}

pub fn outcome_label(o: &Outcome) -> String {
    match o {
        Outcome::Allowed => "allowed".into(),
        Outcome::Blocked => "blocked".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Error(e) => format!("error ({e})"),
    }
}

pub fn verdict_label(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "blocked"
    }
}

/// A change of the manifests folder, applied by the agent.
#[derive(Clone, Debug)]
pub struct Applied {
    pub from_revision: u64,
    pub to_revision: u64,
    /// From the file write to the revision bump seen on `/status`.
    pub elapsed: Duration,
    /// Validation errors and invalid inputs the agent reports afterwards.
    pub problems: Vec<String>,
}

/// The lab, its manifests folder and the agent. Dropping it stops the agent, removes what it
/// pinned and attached, deletes the namespaces and unmounts the private bpffs.
///
/// Every method takes `&self`, so probing threads can share it while the agent is killed and
/// restarted.
pub struct ClusterLab {
    agent: Mutex<Option<AgentProcess>>,
    external: Option<ExternalHost>,
    lab: Lab,
    bpffs: BpffsMount,
    scratch: ScratchDir,
    world: World,
    pods: BTreeMap<String, LabPod>,
    binary: Mutex<Option<PathBuf>>,
    uninstalled: AtomicBool,
}

impl ClusterLab {
    /// Builds `world` in a new lab (names start with `npe-<tag>`): pods with their servers,
    /// Services, the external host; writes the Namespace and Pod manifests. No agent yet.
    pub fn build(world: &World, tag: &str) -> Result<Self> {
        let scratch = ScratchDir::new(tag).context("creating the scratch folder under /tmp")?;
        let bpffs = BpffsMount::new(tag).context("mounting a private bpffs under /tmp")?;
        let mut lab = Lab::new(tag).context("creating the lab's node namespace")?;
        let mut pods = BTreeMap::new();
        for spec in &world.pods {
            let pod = lab
                .add_pod(&format!("{}-{}", spec.namespace, spec.name))
                .with_context(|| format!("adding pod {}", spec.key()))?;
            for (_, port, protocol) in &spec.ports {
                match protocol {
                    Protocol::Tcp => lab.serve_tcp(&pod, *port),
                    Protocol::Udp => lab.serve_udp(&pod, *port),
                }
                .with_context(|| format!("starting a server on {}:{port}", spec.key()))?;
            }
            pods.insert(spec.key(), pod);
        }
        for svc in &world.services {
            let backend = pods
                .get(&svc.backend)
                .ok_or_else(|| anyhow!("service {}: no pod {}", svc.dns_name(), svc.backend))?;
            for (port, target, protocol) in &svc.ports {
                lab.add_service(
                    IpAddr::V4(svc.vip4),
                    *port,
                    IpAddr::V4(backend.ipv4),
                    *target,
                    *protocol,
                )
                .and_then(|()| {
                    lab.add_service(
                        IpAddr::V6(svc.vip6),
                        *port,
                        IpAddr::V6(backend.ipv6),
                        *target,
                        *protocol,
                    )
                })
                .with_context(|| format!("adding service {}:{port}", svc.dns_name()))?;
            }
        }
        let external = match &world.external {
            Some(spec) => {
                let name = format!("{}-ext", lab.node().name().trim_end_matches("-node"));
                Some(
                    ExternalHost::create(lab.node(), &name, &spec.ports)
                        .context("creating the external host")?,
                )
            }
            None => None,
        };
        let ips: BTreeMap<String, (Ipv4Addr, Ipv6Addr)> = pods
            .iter()
            .map(|(k, p)| (k.clone(), (p.ipv4, p.ipv6)))
            .collect();
        let cluster = ClusterLab {
            agent: Mutex::new(None),
            external,
            lab,
            bpffs,
            scratch,
            world: world.clone(),
            pods,
            binary: Mutex::new(None),
            uninstalled: AtomicBool::new(false),
        };
        let path = cluster.manifests_dir().join("cluster.yaml");
        std::fs::write(&path, world.manifests(&ips))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(cluster)
    }

    fn agent_slot(&self) -> MutexGuard<'_, Option<AgentProcess>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the running agent.
    pub fn with_agent<T>(&self, f: impl FnOnce(&mut AgentProcess) -> Result<T>) -> Result<T> {
        let mut slot = self.agent_slot();
        let agent = slot.as_mut().ok_or_else(|| anyhow!("no agent running"))?;
        f(agent)
    }

    /// Starts `binary agent` in the node namespace on the manifests folder and a private
    /// bpffs, and waits until it is ready; returns how long that took.
    pub fn start_agent(&self, binary: &Path) -> Result<Duration> {
        let mut slot = self.agent_slot();
        if slot.is_some() {
            return Err(anyhow!("the agent is already running"));
        }
        let mut args: Vec<OsString> = vec![
            "--manifests".into(),
            self.manifests_dir().into(),
            "--node".into(),
            self.world.node.clone().into(),
            "--bpffs".into(),
            self.bpffs_dir().into(),
        ];
        if self.external.is_some() {
            args.push("--uplink".into());
            args.push(external::UPLINK.into());
        }
        let listen: SocketAddr = AGENT_LISTEN.parse().expect("a socket address");
        let mut agent = AgentProcess::start(
            binary,
            &self.lab.node().path(),
            listen,
            &args,
            &self.log_path(),
        )
        .with_context(|| format!("starting {} agent", binary.display()))?;
        let took = agent.wait_ready(Duration::from_secs(30));
        *self.binary.lock().unwrap_or_else(|p| p.into_inner()) = Some(binary.to_path_buf());
        *slot = Some(agent);
        Ok(took?)
    }

    /// `kill -9` of the agent (its pinned programs and maps stay).
    pub fn kill9_agent(&self) -> Result<()> {
        let mut agent = self
            .agent_slot()
            .take()
            .ok_or_else(|| anyhow!("no agent running"))?;
        agent.kill9().context("kill -9 of the agent")?;
        Ok(())
    }

    /// SIGTERM to the agent; waits until it exited.
    pub fn stop_agent(&self) -> Result<()> {
        let agent = self.agent_slot().take();
        if let Some(mut agent) = agent {
            agent
                .terminate(Duration::from_secs(10))
                .context("stopping the agent")?;
        }
        Ok(())
    }

    fn binary(&self) -> Result<PathBuf> {
        self.binary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("the agent never ran"))
    }

    /// Starts the agent again with the same binary, folder and bpffs.
    pub fn restart_agent(&self) -> Result<Duration> {
        self.start_agent(&self.binary()?)
    }

    /// `npenforce uninstall --bpffs DIR` after stopping the agent; returns its output.
    pub fn uninstall(&self) -> Result<String> {
        let binary = self.binary()?;
        self.stop_agent()?;
        let out = std::process::Command::new(&binary)
            .arg("uninstall")
            .arg("--bpffs")
            .arg(self.bpffs_dir())
            .output()
            .with_context(|| format!("running {} uninstall", binary.display()))?;
        if !out.status.success() {
            return Err(anyhow!(
                "npenforce uninstall failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.uninstalled.store(true, Ordering::Relaxed);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.scratch.0.join("manifests")
    }

    pub fn log_path(&self) -> PathBuf {
        self.scratch.0.join("agent.log")
    }

    pub fn bpffs_dir(&self) -> PathBuf {
        self.bpffs.root().join("npenforce")
    }

    /// The lab pod of `namespace/name`.
    pub fn pod(&self, key: &str) -> &LabPod {
        self.pods
            .get(key)
            .unwrap_or_else(|| panic!("the lab has no pod {key}"))
    }

    pub fn external(&self) -> Option<&ExternalHost> {
        self.external.as_ref()
    }

    /// Writes `docs` (YAML documents) as `<stem>.yaml` into the folder (atomically: written
    /// aside, then renamed) and waits until the agent applied it.
    pub fn write_manifest(&self, stem: &str, docs: &[&str]) -> Result<Applied> {
        let text = docs
            .iter()
            .map(|d| d.trim_end().to_string() + "\n")
            .collect::<Vec<_>>()
            .join("---\n");
        let dir = self.manifests_dir();
        let aside = dir.join(format!(".{stem}.tmp"));
        let path = dir.join(format!("{stem}.yaml"));
        self.change(|| {
            std::fs::write(&aside, &text)?;
            std::fs::rename(&aside, &path)
        })
        .with_context(|| format!("applying {}", path.display()))
    }

    /// Deletes `<stem>.yaml` and waits until the agent applied the deletion.
    pub fn remove_manifest(&self, stem: &str) -> Result<Applied> {
        let path = self.manifests_dir().join(format!("{stem}.yaml"));
        self.change(|| std::fs::remove_file(&path))
            .with_context(|| format!("removing {}", path.display()))
    }

    fn change(&self, f: impl FnOnce() -> std::io::Result<()>) -> Result<Applied> {
        self.with_agent(|agent| {
            let before = agent.revision().context("reading the agent's /status")?;
            let start = Instant::now();
            f()?;
            let (after, _) = agent.wait_revision(before, APPLY_TIMEOUT)?;
            let elapsed = start.elapsed();
            let status = agent.status().context("reading the agent's /status")?;
            let mut problems = Vec::new();
            for key in ["validation_errors", "invalid_inputs"] {
                if let Some(items) = status[key].as_array() {
                    problems.extend(items.iter().map(|i| format!("{key}: {i}")));
                }
            }
            if let Some(e) = status["enforcer_error"].as_str() {
                problems.push(format!("enforcer_error: {e}"));
            }
            Ok(Applied {
                from_revision: before,
                to_revision: after,
                elapsed,
                problems,
            })
        })
    }

    /// The address a probe goes to, the expected HTTP body, and the `Host` header.
    fn destination(&self, to: &Endpoint, family: Family) -> (IpAddr, String, String) {
        let pick = |v4: Ipv4Addr, v6: Ipv6Addr| match family {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6),
        };
        match to {
            Endpoint::Pod(key) => {
                let p = self.pod(key);
                let ip = pick(p.ipv4, p.ipv6);
                (ip, p.name.clone(), ip.to_string())
            }
            Endpoint::Service(name) => {
                let svc = self
                    .world
                    .service_spec(name)
                    .unwrap_or_else(|| panic!("the world has no service {name}"));
                (
                    pick(svc.vip4, svc.vip6),
                    self.pod(&svc.backend).name.clone(),
                    name.clone(),
                )
            }
            Endpoint::External => (
                pick(external::EXTERNAL_V4, external::EXTERNAL_V6),
                external::EXTERNAL_NAME.to_string(),
                "www.example.com".to_string(),
            ),
        }
    }

    /// Runs one probe over one family.
    pub fn probe(&self, probe: &Probe, family: Family, timeout: Duration) -> Outcome {
        let (ip, body, host) = self.destination(&probe.to, family);
        let (port, protocol) = (probe.port, probe.via.protocol());
        let netns = match &probe.from {
            Source::Pod(key) => {
                if probe.via != Via::Http {
                    return self
                        .lab
                        .probe_with_timeout(self.pod(key), ip, port, protocol, timeout);
                }
                self.lab.pod_netns_of(self.pod(key))
            }
            Source::External => match &self.external {
                Some(e) => e.netns(),
                None => return Outcome::Error("the world has no external host".into()),
            },
        };
        let run = move || match probe.via {
            Via::Http => http::probe(SocketAddr::new(ip, port), &host, Some(&body), timeout),
            // The lab's own probe (its default timeout).
            Via::Tcp | Via::Udp => crate::lab::probe_from_here(ip, port, protocol),
        };
        netns
            .run(run)
            .unwrap_or_else(|e| Outcome::Error(format!("entering {}: {e}", netns.name())))
    }

    /// Runs every probe over both families, all in parallel.
    pub fn probe_all(&self, probes: &[Probe], timeout: Duration) -> Vec<Observed> {
        std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .map(|p| {
                    (
                        s.spawn(move || self.probe(p, Family::V4, timeout)),
                        s.spawn(move || self.probe(p, Family::V6, timeout)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(v4, v6)| Observed {
                    v4: v4
                        .join()
                        .unwrap_or_else(|_| Outcome::Error("probe panicked".into())),
                    v6: v6
                        .join()
                        .unwrap_or_else(|_| Outcome::Error("probe panicked".into())),
                })
                .collect()
        })
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        let agent = self.agent_slot().take();
        if let Some(mut agent) = agent {
            let _ = agent.terminate(Duration::from_secs(5));
        }
        if !self.uninstalled.load(Ordering::Relaxed) {
            if let Err(e) = crate::dataplane::pins::uninstall(&self.bpffs_dir()) {
                eprintln!(
                    "lab: could not remove the pins under {}: {e}",
                    self.bpffs_dir().display()
                );
            }
        }
        // Then the fields drop in order: external host, lab namespaces, bpffs, scratch folder.
    }
}
