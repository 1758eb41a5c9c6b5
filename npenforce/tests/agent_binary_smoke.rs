//! The agent binary end to end on a manifests folder: it becomes ready, enforces, keeps
//! enforcing after SIGTERM (pinned state), and `npenforce uninstall` removes everything.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use npenforce::lab::{kernel_tests_enabled, BpffsMount, Lab, Outcome, Protocol};

const NODE: &str = "smoke-node";

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(lab: &Lab, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    lab.node()
        .run(move || {
            let mut stream = TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(300),
            )
            .ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            Some((code, text))
        })
        .ok()
        .flatten()
}

fn pod_yaml(name: &str, labels: &str, ips: [IpAddr; 2]) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {NODE}, containers: [{{name: main, image: lab}}]}}\n\
         status: {{phase: Running, podIP: \"{}\", podIPs: [{{ip: \"{}\"}}, {{ip: \"{}\"}}]}}\n",
        ips[0], ips[0], ips[1]
    )
}

fn start_agent(lab: &Lab, dir: &Path, bpffs: &Path, port: u16) -> AgentProcess {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", lab.node().path().display()))
        .arg(env!("CARGO_BIN_EXE_npenforce"))
        .args([
            "agent",
            "--node",
            NODE,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--manifests")
        .arg(dir)
        .arg("--bpffs")
        .arg(bpffs)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the agent");
    AgentProcess(child)
}

fn wait_ready(lab: &Lab, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, _)) = http_get(lab, port, "/readyz") {
            return;
        }
        assert!(Instant::now() < deadline, "the agent did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_binary_enforces_survives_sigterm_and_uninstalls() {
    if !kernel_tests_enabled("agent_binary_enforces_survives_sigterm_and_uninstalls") {
        return;
    }
    let mut lab = Lab::new("smoke").expect("lab");
    let web = lab.add_pod("web").expect("web");
    let client = lab.add_pod("client").expect("client");
    lab.serve_tcp(&web, 80).expect("server");
    let mount = BpffsMount::new("smoke").expect("bpffs");
    let pins = mount.root().join("npenforce");
    let dir = tempdir();
    std::fs::write(
        dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("pods.yaml"),
        format!(
            "{}---\n{}",
            pod_yaml("web", "app: web", web.ips()),
            pod_yaml("client", "", client.ips())
        ),
    )
    .expect("write");
    std::fs::write(
        dir.join("deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-deny-all, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: web}}}\n",
    )
    .expect("write");

    let port = 19402;
    let mut agent = start_agent(&lab, &dir, &pins, port);
    wait_ready(&lab, port);
    assert_eq!(
        lab.probe(&client, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Blocked,
        "deny-all enforced"
    );
    let (code, metrics) = http_get(&lab, port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("npenforce_kernel_drops_total{reason=\"ingress_denied\"}"),
        "kernel counters exported: {metrics}"
    );

    // SIGTERM: the agent stops, the pinned programs keep enforcing.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = agent.0.wait().expect("agent exits");
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");
    assert_eq!(
        lab.probe(&client, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Blocked,
        "still enforced without the agent"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_npenforce"))
        .args(["uninstall", "--bpffs"])
        .arg(&pins)
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "uninstall removes the pins");
    assert_eq!(
        lab.probe(&client, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Allowed,
        "nothing enforces after uninstall"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("npe-smoke-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
