//! `npenforce check`: would traffic from one pod to another be allowed, and why.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::manifests;
use crate::policy::{
    explain, ports::parse_protocol, Compiler, DesiredState, Explanation, MapEntries, NodeScope,
    ObjectKey, Pod, SideExplanation, Snapshot,
};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Arguments of `npenforce check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Folder of manifests (Namespace, Pod and NetworkPolicy objects, YAML or JSON).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// Source: a pod as NAMESPACE/NAME, or an IP address.
    #[arg(long, value_name = "NS/POD")]
    pub from: String,
    /// Destination: a pod as NAMESPACE/NAME, or an IP address.
    #[arg(long, value_name = "NS/POD")]
    pub to: String,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    /// Protocol.
    #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "SCTP"], ignore_case = true)]
    pub protocol: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// A folder of manifests compiled with every pod local (cluster-wide view).
pub struct Cluster {
    pub snapshot: Snapshot,
    pub state: DesiredState,
    pub entries: MapEntries,
}

/// Loads and compiles a folder of manifests; manifest and validation problems are printed
/// to stderr as warnings.
pub fn load_cluster(dir: &Path) -> anyhow::Result<Cluster> {
    let loaded = manifests::load_dir(dir)
        .with_context(|| format!("loading manifests from {}", dir.display()))?;
    for e in &loaded.errors {
        eprintln!("warning: {e}");
    }
    let snapshot = loaded.snapshot(NodeScope::AllNodes, Vec::new());
    let compiler = Compiler::new(snapshot.clone());
    let state = compiler.desired_state();
    for e in &state.validation_errors {
        eprintln!("warning: {e} (policy not enforced; the pods it selects stay isolated)");
    }
    Ok(Cluster {
        entries: compiler.map_entries().clone(),
        snapshot,
        state,
    })
}

/// An endpoint given on the command line.
enum Endpoint<'a> {
    Pod(&'a Pod),
    Ip(IpAddr),
}

fn resolve<'a>(snapshot: &'a Snapshot, text: &str, flag: &str) -> anyhow::Result<Endpoint<'a>> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Endpoint::Ip(ip));
    }
    let Some(key) = ObjectKey::parse(text) else {
        bail!("{flag} {text:?}: expected NAMESPACE/POD or an IP address");
    };
    let Some(pod) = snapshot.pods.get(&key) else {
        bail!("{flag} {text}: no such pod in the manifests");
    };
    if pod.ips.is_empty() {
        bail!("{flag} {text}: the pod has no IP (status.podIP unset, or the pod finished)");
    }
    Ok(Endpoint::Pod(pod))
}

/// Picks a source and destination address of the same family.
fn pick_pair(src: &Endpoint<'_>, dst: &Endpoint<'_>) -> Option<(IpAddr, IpAddr)> {
    let ips = |e: &Endpoint<'_>| match e {
        Endpoint::Pod(p) => p.ips.clone(),
        Endpoint::Ip(ip) => vec![ip.to_canonical()],
    };
    let (s, d) = (ips(src), ips(dst));
    s.iter()
        .flat_map(|a| d.iter().map(move |b| (*a, *b)))
        .find(|(a, b)| a.is_ipv4() == b.is_ipv4())
}

/// Runs the command; returns the process exit status (0 allowed, 1 denied).
pub fn run(args: &CheckArgs) -> anyhow::Result<i32> {
    let protocol = parse_protocol(Some(args.protocol.to_ascii_uppercase().as_str()))
        .map_err(anyhow::Error::msg)?;
    let cluster = load_cluster(&args.manifests)?;
    let src = resolve(&cluster.snapshot, &args.from, "--from")?;
    let dst = resolve(&cluster.snapshot, &args.to, "--to")?;
    let Some((s, d)) = pick_pair(&src, &dst) else {
        bail!(
            "{} and {} have no addresses of the same IP family",
            args.from,
            args.to
        );
    };
    let ex = explain(&cluster.state, &cluster.entries, s, d, protocol, args.port);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&ex)?),
        OutputFormat::Text => print!("{}", render_text(&ex, &args.from, &args.to)),
    }
    Ok(if ex.allowed { 0 } else { 1 })
}

/// The text form of an explanation.
pub fn render_text(ex: &Explanation, from: &str, to: &str) -> String {
    let mut out = format!(
        "{}: {from} ({}) -> {to} ({}) {}/{}\n",
        if ex.allowed { "ALLOWED" } else { "DENIED" },
        ex.source,
        ex.destination,
        ex.protocol,
        ex.port
    );
    let side = |name: &str, who: &str, s: &SideExplanation| {
        let mut line = format!("  {name} at {who}: ");
        if !s.isolating_policies.is_empty() {
            line.push_str(&format!(
                "isolated by {}; ",
                s.isolating_policies.join(", ")
            ));
        }
        line.push_str(&s.reason);
        line.push('\n');
        line
    };
    out.push_str(&side("egress ", from, &ex.egress));
    out.push_str(&side("ingress", to, &ex.ingress));
    out
}
