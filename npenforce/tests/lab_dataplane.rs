//! Real packets through the enforcing programs, with tables from the policy compiler.

mod node_lab;

use node_lab::{NodeLab, PodSpec};
use npenforce::{
    dataplane::{DataplaneOptions, JudgesRelease},
    lab::{kernel_tests_enabled, Outcome, Protocol},
};

const ALLOWED: Outcome = Outcome::Allowed;
const BLOCKED: Outcome = Outcome::Blocked;

/// The seed cards' cast (web, client, monitor) on a node loaded with `options`.
fn web_lab_with(tag: &str, options: DataplaneOptions) -> NodeLab {
    let mut lab = NodeLab::new(tag, options);
    lab.namespace("default", &[]);
    lab.namespace("other", &[("team", "operations")]);
    lab.pod(PodSpec {
        namespace: "default",
        name: "web",
        labels: &[("app", "web")],
        ports: &[("http", 80, "TCP")],
    });
    lab.pod(PodSpec {
        namespace: "default",
        name: "client",
        labels: &[],
        ports: &[],
    });
    lab.pod(PodSpec {
        namespace: "other",
        name: "monitor",
        labels: &[("type", "monitoring")],
        ports: &[],
    });
    lab.serve(
        "default",
        "web",
        &[
            (80, Protocol::Tcp),
            (81, Protocol::Tcp),
            (53, Protocol::Udp),
        ],
    );
    lab.serve("default", "client", &[(80, Protocol::Tcp)]);
    lab.serve("other", "monitor", &[(80, Protocol::Tcp)]);
    lab
}

#[test]
fn ingress_policy_by_pod_and_namespace_selector() {
    if !kernel_tests_enabled("ingress_policy_by_pod_and_namespace_selector") {
        return;
    }
    let mut lab = web_lab("ingr");
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "no policy yet"
        );
    }
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-all-ns-monitoring, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: operations}}
      podSelector: {matchLabels: {type: monitoring}}
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "client is not monitoring"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "monitoring pod in an operations namespace"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                53,
                Protocol::Udp,
                v6
            ),
            ALLOWED,
            "a rule without ports allows every port"
        );
        // web itself is not isolated for egress, nor is client for ingress.
        assert_eq!(
            lab.probe(
                ("default", "web"),
                ("default", "client"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "web -> client is not governed"
        );
    }
}

#[test]
fn ports_named_ports_and_ranges() {
    if !kernel_tests_enabled("ports_named_ports_and_ranges") {
        return;
    }
    let mut lab = web_lab("port");
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-http-only, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports:
    - {port: http}
    - {port: 50, endPort: 60, protocol: UDP}
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "named port http = 80"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                81,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "81 is not listed"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                53,
                Protocol::Udp,
                v6
            ),
            ALLOWED,
            "53 within UDP 50-60"
        );
    }
}

#[test]
fn egress_policy_and_replies_with_both_sides_isolated() {
    if !kernel_tests_enabled("egress_policy_and_replies_with_both_sides_isolated") {
        return;
    }
    let mut lab = web_lab("egrs");
    // client may only talk to web:80; web only accepts client. Both isolated both ways: the
    // replies must still pass (stateful).
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: web}}
    ports:
    - {port: 80}
  ingress:
  - from:
    - podSelector: {}
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "allowed by egress and ingress"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                81,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "egress allows only 80"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                53,
                Protocol::Udp,
                v6
            ),
            BLOCKED,
            "egress allows only TCP 80"
        );
        assert_eq!(
            lab.probe(
                ("default", "web"),
                ("default", "client"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "web's egress only reaches web"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "web's ingress only from default"
        );
    }
}

#[test]
fn node_traffic_is_always_allowed() {
    if !kernel_tests_enabled("node_traffic_is_always_allowed") {
        return;
    }
    let mut lab = web_lab("node");
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#,
    );
    let web = lab.lab_pod("default", "web").clone();
    for ip in web.ips() {
        let outcome = lab
            .lab
            .node()
            .run(|| npenforce::lab::probe_from_here(ip, 80, Protocol::Tcp))
            .expect("entering the node");
        assert_eq!(outcome, ALLOWED, "node -> web {ip} (kubelet probes)");
    }
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        BLOCKED
    );
}

#[test]
fn policy_delete_restores_traffic() {
    if !kernel_tests_enabled("policy_delete_restores_traffic") {
        return;
    }
    let mut lab = web_lab("pdel");
    let key = lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
"#,
    );
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        BLOCKED
    );
    lab.delete_policy(key);
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        ALLOWED
    );
}

#[test]
fn service_vip_egress_is_judged_against_the_backend() {
    if !kernel_tests_enabled("service_vip_egress_is_judged_against_the_backend") {
        return;
    }
    let mut lab = web_lab("svc");
    let web = lab.lab_pod("default", "web").clone();
    let vip4: std::net::IpAddr = "10.96.0.10".parse().expect("literal");
    let vip6: std::net::IpAddr = "fd00:10:96::10".parse().expect("literal");
    lab.lab
        .add_service(vip4, 80, std::net::IpAddr::V4(web.ipv4), 80, Protocol::Tcp)
        .expect("v4 service");
    lab.lab
        .add_service(vip6, 80, std::net::IpAddr::V6(web.ipv6), 80, Protocol::Tcp)
        .expect("v6 service");
    let via_vip = |lab: &node_lab::NodeLab, from: (&str, &str), vip| {
        lab.lab
            .probe(lab.lab_pod(from.0, from.1), vip, 80, Protocol::Tcp)
    };
    for vip in [vip4, vip6] {
        assert_eq!(
            via_vip(&lab, ("default", "client"), vip),
            ALLOWED,
            "no policy: the VIP works"
        );
    }

    // client may reach app=web pods on 80: the VIP is not in the policy, its backend is.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
"#,
    );
    for vip in [vip4, vip6] {
        assert_eq!(
            via_vip(&lab, ("default", "client"), vip),
            ALLOWED,
            "egress judged against the backend {vip}"
        );
    }
    // Now client may only reach the monitoring pod: the same VIP is blocked.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {type: monitoring}}}]
"#,
    );
    for vip in [vip4, vip6] {
        assert_eq!(
            via_vip(&lab, ("default", "client"), vip),
            BLOCKED,
            "backend not allowed by egress, via {vip}"
        );
    }
    // Ingress on the backend, reached through the VIP, with the client's egress open again:
    // web accepts only the monitoring pod, and replies come back through the un-NAT.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Ingress, Egress]
  egress: [{}]
"#,
    );
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-monitoring, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: operations}}, podSelector: {matchLabels: {type: monitoring}}}]
"#,
    );
    for vip in [vip4, vip6] {
        assert_eq!(
            via_vip(&lab, ("default", "client"), vip),
            BLOCKED,
            "web's ingress denies client via {vip}"
        );
        assert_eq!(
            via_vip(&lab, ("other", "monitor"), vip),
            ALLOWED,
            "web's ingress admits monitor via {vip}"
        );
    }
}

#[test]
fn spoofed_source_is_dropped() {
    if !kernel_tests_enabled("spoofed_source_is_dropped") {
        return;
    }
    let mut lab = web_lab("spoof");
    // web admits only the monitoring pod; client borrows monitor's address.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-monitoring, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {type: monitoring}}}]
"#,
    );
    let client = lab.lab_pod("default", "client").clone();
    let monitor = lab.lab_pod("other", "monitor").clone();
    let web = lab.lab_pod("default", "web").clone();
    // Give client monitor's address too, as a second address on its eth0, and send from it.
    let client_ns = lab.lab.pod_netns_of(&client).name().to_owned();
    npenforce::lab::netns::run_ip(&[
        "-n",
        &client_ns,
        "addr",
        "add",
        &format!("{}/32", monitor.ipv4),
        "dev",
        "eth0",
    ])
    .expect("adding the borrowed address");
    let outcome = lab
        .lab
        .pod_netns_of(&client)
        .run(|| {
            npenforce::lab::probe_from_source(
                monitor.ipv4.into(),
                web.ipv4.into(),
                80,
                Protocol::Tcp,
            )
        })
        .expect("entering client");
    assert_eq!(
        outcome, BLOCKED,
        "a packet from client with monitor's address must be dropped"
    );
    let counters = lab.enforcer.node_counters().expect("reading counters");
    assert!(
        counters.drops(npenforce_common::drop_reason::SPOOFED_SOURCE) >= 1,
        "the drop must come from the source check (counters {:?})",
        counters
    );
    let events = lab.enforcer.drain_drop_events();
    assert!(
        events.iter().any(
            |e| e.reason == npenforce_common::drop_reason::SPOOFED_SOURCE
                && npenforce::addr::from_kernel_addr(e.src) == std::net::IpAddr::V4(monitor.ipv4)
        ),
        "a drop event names the borrowed source: {events:?}"
    );
    assert_eq!(
        lab.probe(
            ("other", "monitor"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        ALLOWED,
        "the real monitor still passes"
    );
}

#[test]
fn large_udp_datagrams_that_fragment() {
    if !kernel_tests_enabled("large_udp_datagrams_that_fragment") {
        return;
    }
    let mut lab = web_lab("frag");
    let key = lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-dns, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 53, protocol: UDP}]
"#,
    );
    let client = lab.lab_pod("default", "client").clone();
    let web = lab.lab_pod("default", "web").clone();
    for ip in web.ips() {
        // 4000 bytes over a 1500-byte MTU: three fragments, only the first has ports.
        assert_eq!(
            lab.lab.probe_udp_size(&client, ip, 53, 4000),
            ALLOWED,
            "fragmented datagram to {ip}"
        );
        assert_eq!(
            lab.lab.probe_udp_size(&client, ip, 53, 100),
            ALLOWED,
            "small datagram to {ip}"
        );
    }
    lab.delete_policy(key);
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 80}]
"#,
    );
    for ip in web.ips() {
        assert_eq!(
            lab.lab.probe_udp_size(&client, ip, 53, 4000),
            BLOCKED,
            "fragmented datagram to {ip} now denied"
        );
    }
    let counters = lab.enforcer.node_counters().expect("counters");
    assert!(
        counters.drops(npenforce_common::drop_reason::INGRESS_DENIED) >= 2,
        "first fragments denied by policy: {counters:?}"
    );
}

fn web_isolated_from_client_allowed(lab: &mut NodeLab) -> npenforce::policy::PolicyKey {
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {}}]
"#,
    )
}

fn web_isolated_from_monitor_only(lab: &mut NodeLab) -> npenforce::policy::PolicyKey {
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: operations}}}]
"#,
    )
}

#[test]
fn a_connection_the_new_policy_denies_is_cut() {
    if !kernel_tests_enabled("a_connection_the_new_policy_denies_is_cut") {
        return;
    }
    let mut lab = web_lab("cut");
    web_isolated_from_client_allowed(&mut lab);
    let client = lab.lab_pod("default", "client").clone();
    let web = lab.lab_pod("default", "web").clone();
    let mut conversations: Vec<_> = web
        .ips()
        .iter()
        .map(|ip| {
            lab.lab
                .open_conversation(&client, *ip, 80)
                .expect("connecting")
        })
        .collect();
    for c in &mut conversations {
        assert!(c.exchange(PROBE), "the allowed connection works");
    }
    web_isolated_from_monitor_only(&mut lab);
    for c in &mut conversations {
        assert!(
            !c.exchange(PROBE),
            "the established connection is cut by the new policy"
        );
    }
}

#[test]
fn keep_established_flag_keeps_connections() {
    if !kernel_tests_enabled("keep_established_flag_keeps_connections") {
        return;
    }
    let mut config = npenforce_common::DataplaneConfig::DEFAULT;
    config.keep_established = 1;
    let mut lab = web_lab_with(
        "keep",
        DataplaneOptions {
            config: Some(config),
            ..Default::default()
        },
    );
    web_isolated_from_client_allowed(&mut lab);
    let client = lab.lab_pod("default", "client").clone();
    let web = lab.lab_pod("default", "web").clone();
    let mut conversation = lab
        .lab
        .open_conversation(&client, std::net::IpAddr::V4(web.ipv4), 80)
        .expect("connecting");
    assert!(conversation.exchange(PROBE));
    web_isolated_from_monitor_only(&mut lab);
    assert!(
        conversation.exchange(PROBE),
        "kept: established flows survive with the flag"
    );
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        BLOCKED,
        "new connections follow the new policy"
    );
}

const PROBE: std::time::Duration = std::time::Duration::from_millis(800);

fn web_lab(tag: &str) -> NodeLab {
    web_lab_with(tag, DataplaneOptions::default())
}

#[test]
fn allowed_flow_loses_nothing_during_100_policy_updates() {
    if !kernel_tests_enabled("allowed_flow_loses_nothing_during_100_policy_updates") {
        return;
    }
    let mut lab = web_lab("churn");
    web_isolated_from_client_allowed(&mut lab);
    let client = lab.lab_pod("default", "client").clone();
    let web = lab.lab_pod("default", "web").clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let client_ns = lab.lab.pod_netns_of(&client).path();
    let (sent, lost) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            npenforce::lab::netns::run_in_netns(&client_ns, || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                socket.connect((web.ipv4, 53)).expect("connect");
                socket
                    .set_read_timeout(Some(std::time::Duration::from_millis(500)))
                    .expect("timeout");
                let (mut sent, mut lost) = (0u32, 0u32);
                let mut buf = [0u8; 128];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 50 {
                    sent += 1;
                    socket
                        .send(format!("ping {sent}").as_bytes())
                        .expect("send");
                    match socket.recv(&mut buf) {
                        Ok(n) if buf[..n].starts_with(b"pong") => {}
                        _ => lost += 1,
                    }
                }
                (sent, lost)
            })
            .expect("entering client")
        });
        // 100 unrelated updates: policies on the monitoring pod, and a peer added to and
        // removed from web's own table that has nothing to do with client.
        for i in 0..100 {
            let yaml = if i % 2 == 0 {
                format!(
                    r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: churn-{i}, namespace: other}}
spec:
  podSelector: {{matchLabels: {{type: monitoring}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 192.0.2.{}/32}}}}]
"#,
                    i % 250
                )
            } else {
                format!(
                    r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-extra, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 198.51.100.0/{}}}}}]
"#,
                    16 + i % 16
                )
            };
            lab.policy(&yaml);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().expect("prober thread")
    });
    assert!(
        sent >= 50,
        "the flow ran during the updates ({sent} datagrams)"
    );
    assert_eq!(
        lost, 0,
        "{lost} of {sent} request/answer pairs lost during 100 policy updates"
    );
}

#[test]
fn attaching_mid_flow_keeps_allowed_connections() {
    if !kernel_tests_enabled("attaching_mid_flow_keeps_allowed_connections") {
        return;
    }
    // Pods wired and talking before the agent attaches (agent start on a busy node).
    let mut lab = NodeLab::new("midf", DataplaneOptions::default());
    lab.namespace("default", &[]);
    let web = PodSpec {
        namespace: "default",
        name: "web",
        labels: &[("app", "web")],
        ports: &[],
    };
    let client = PodSpec {
        namespace: "default",
        name: "client",
        labels: &[("role", "client")],
        ports: &[],
    };
    let intruder = PodSpec {
        namespace: "default",
        name: "intruder",
        labels: &[],
        ports: &[],
    };
    for spec in [&web, &client, &intruder] {
        lab.wire(spec);
    }
    lab.serve("default", "web", &[(80, Protocol::Tcp)]);
    let web_ip = std::net::IpAddr::V4(lab.lab_pod("default", "web").ipv4);
    let client_pod = lab.lab_pod("default", "client").clone();
    let intruder_pod = lab.lab_pod("default", "intruder").clone();
    let mut allowed = lab
        .lab
        .open_conversation(&client_pod, web_ip, 80)
        .expect("client connects");
    let mut denied = lab
        .lab
        .open_conversation(&intruder_pod, web_ip, 80)
        .expect("intruder connects");
    assert!(
        allowed.exchange(PROBE) && denied.exchange(PROBE),
        "both work before enforcement"
    );

    // Policy first, then attach: both sides isolated, only client -> web allowed.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-client-to-web, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
"#,
    );
    for spec in [&web, &client, &intruder] {
        lab.announce(spec);
        lab.attach(spec.namespace, spec.name);
    }
    assert!(
        allowed.exchange(PROBE),
        "the allowed connection survives the attach"
    );
    assert!(allowed.exchange(PROBE), "and keeps working");
    assert!(
        !denied.exchange(PROBE),
        "the connection the policy denies is stopped"
    );
    let counters = lab.enforcer.node_counters().expect("counters");
    assert!(
        counters.get(npenforce_common::node_counter::CT_CREATED) >= 1,
        "the allowed connection is tracked from its first packet after the attach: {counters:?}"
    );
    assert_eq!(
        counters.drops(npenforce_common::drop_reason::SPOOFED_SOURCE),
        0,
        "nothing counts as spoofed: {counters:?}"
    );
}

#[test]
fn new_pods_are_isolated_from_their_first_packet() {
    if !kernel_tests_enabled("new_pods_are_isolated_from_their_first_packet") {
        return;
    }
    let mut lab = web_lab("newp");
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  podSelector: {}
"#,
    );
    // The CNI wires a new pod; the agent attaches when the link appears, before the API
    // server has told anyone the pod's IP: the veth is pending.
    let fresh = PodSpec {
        namespace: "default",
        name: "fresh",
        labels: &[],
        ports: &[],
    };
    let fresh_pod = lab.wire(&fresh);
    lab.serve("default", "fresh", &[(80, Protocol::Tcp)]);
    lab.attach("default", "fresh");
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "fresh"),
            80,
            Protocol::Tcp,
            false
        ),
        BLOCKED,
        "pending: only node traffic"
    );
    let from_node = lab
        .lab
        .node()
        .run(|| {
            npenforce::lab::probe_from_here(std::net::IpAddr::V4(fresh_pod.ipv4), 80, Protocol::Tcp)
        })
        .expect("entering the node");
    assert_eq!(
        from_node, ALLOWED,
        "pending pods still get node traffic (kubelet probes)"
    );
    // Now the pod is known: the namespace's default deny applies.
    lab.announce(&fresh);
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "fresh"),
            80,
            Protocol::Tcp,
            false
        ),
        BLOCKED,
        "default deny"
    );
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-fresh, namespace: default}
spec:
  podSelector: {}
  ingress: [{}]
"#,
    );
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "fresh"),
            80,
            Protocol::Tcp,
            false
        ),
        ALLOWED,
        "allowed once a policy admits it"
    );
}

#[test]
fn pending_allow_flag_lets_unknown_pods_talk() {
    if !kernel_tests_enabled("pending_allow_flag_lets_unknown_pods_talk") {
        return;
    }
    let mut config = npenforce_common::DataplaneConfig::DEFAULT;
    config.pending_allows = 1;
    let mut lab = NodeLab::new(
        "pall",
        DataplaneOptions {
            config: Some(config),
            ..Default::default()
        },
    );
    let a = PodSpec {
        namespace: "default",
        name: "a",
        labels: &[],
        ports: &[],
    };
    let b = PodSpec {
        namespace: "default",
        name: "b",
        labels: &[],
        ports: &[],
    };
    lab.wire(&a);
    lab.wire(&b);
    lab.serve("default", "b", &[(80, Protocol::Tcp)]);
    lab.attach("default", "a");
    lab.attach("default", "b");
    assert_eq!(
        lab.probe(("default", "a"), ("default", "b"), 80, Protocol::Tcp, false),
        ALLOWED
    );
}

#[test]
fn pinned_state_keeps_enforcing_across_an_agent_restart() {
    if !kernel_tests_enabled("pinned_state_keeps_enforcing_across_an_agent_restart") {
        return;
    }
    let bpffs = npenforce::lab::BpffsMount::new("pin").expect("mounting a private bpffs");
    let pin_dir = bpffs.root().join("npenforce");
    let options = DataplaneOptions {
        bpffs: Some(pin_dir.clone()),
        ..Default::default()
    };
    let mut lab = web_lab_with("pin", options.clone());
    web_isolated_from_monitor_only(&mut lab);
    let check = |lab: &NodeLab, phase: &str| {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                false
            ),
            BLOCKED,
            "{phase}: client denied"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                false
            ),
            ALLOWED,
            "{phase}: monitor allowed"
        );
    };
    check(&lab, "agent running");
    let listing = std::process::Command::new("find")
        .arg(&pin_dir)
        .output()
        .expect("find");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(
        pin_dir.join("maps/CONNTRACK_V4").exists() && pin_dir.join("progs").is_dir(),
        "maps and programs are pinned: {listing}"
    );
    let links = std::fs::read_dir(pin_dir.join("links"))
        .expect("links pinned")
        .count();
    assert_eq!(links, 6, "two links per pod veth");

    drop(lab.stop_agent());
    check(&lab, "no agent (pinned programs and maps)");

    lab.start_agent(&options);
    check(&lab, "restarted agent adopted the pins");
    // The restarted agent enforces changes too.
    web_isolated_from_client_allowed(&mut lab);
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        ALLOWED,
        "new policy after restart"
    );

    drop(lab.stop_agent());
    let removed = npenforce::dataplane::pins::uninstall(&pin_dir).expect("uninstall");
    assert_eq!(removed.links, 6);
    assert!(!pin_dir.exists(), "uninstall removes the folder");
    web_isolated_from_monitor_only(&mut lab);
    assert_eq!(
        lab.probe(
            ("default", "client"),
            ("default", "web"),
            80,
            Protocol::Tcp,
            false
        ),
        ALLOWED,
        "after uninstall nothing enforces any more (the placeholder agent attached nothing)"
    );
}

/// A restarted agent that could not attach to some veth leaves the earlier agent's programs
/// there (a TCX link or a clsact filter), and those tail-call through the earlier agent's
/// array of judging programs: the array's pin stays until the new agent runs on every
/// interface the earlier one attached to (the kernel empties an array nothing in userspace
/// holds, and the program would then drop every new flow). Also when the restart starts
/// `IFACES` afresh (a new endpoint table size): then the pinned TCX links say where the
/// earlier agent attached, and with clsact filters, which are not pinned, nothing does, so
/// the array stays.
#[test]
fn earlier_judges_stay_pinned_while_earlier_programs_run() {
    if !kernel_tests_enabled("earlier_judges_stay_pinned_while_earlier_programs_run") {
        return;
    }
    for (tag, clsact_only, fresh_ifaces) in [
        ("judges", false, false),
        ("judges-cls", true, false),
        ("judges-new", false, true),
        ("judges-cls-new", true, true),
    ] {
        let bpffs = npenforce::lab::BpffsMount::new(tag).expect("mounting a private bpffs");
        let first = DataplaneOptions {
            bpffs: Some(bpffs.root().join("npenforce")),
            clsact_only,
            ..Default::default()
        };
        let mut second = first.clone();
        if fresh_ifaces {
            second.map_sizes.endpoints *= 2;
        }
        earlier_judges_stay_pinned(tag, &first, &second);
    }
}

/// `KernelEnforcer::release_older_judges` in the node's namespace, where it tells which
/// interfaces exist (as the agent's threads run there).
fn release_older_judges(lab: &mut NodeLab) -> JudgesRelease {
    let enforcer = &mut lab.enforcer;
    lab.lab
        .node()
        .run(move || enforcer.release_older_judges().expect("releasing"))
        .expect("entering the node")
}

fn earlier_judges_stay_pinned(tag: &str, first: &DataplaneOptions, second: &DataplaneOptions) {
    let mut lab = web_lab_with(tag, first.clone());
    web_isolated_from_monitor_only(&mut lab);
    // Every probe opens a new connection: a new flow, which the first program of web's veth
    // hands to its judging program.
    let check = |lab: &NodeLab, phase: &str| {
        for (from, expected) in [
            (("default", "client"), BLOCKED),
            (("other", "monitor"), ALLOWED),
        ] {
            assert_eq!(
                lab.probe(from, ("default", "web"), 80, Protocol::Tcp, false),
                expected,
                "{tag}, {phase}: {from:?} -> web"
            );
        }
    };
    check(&lab, "first agent");
    let web_veth = lab.lab_pod("default", "web").host_veth.clone();
    let web_ifindex = lab
        .lab
        .node()
        .run(|| npenforce::dataplane::loader::if_index(&web_veth).expect("web's veth"))
        .expect("entering the node");
    let unknown = second.clsact_only && second.map_sizes != first.map_sizes;

    drop(lab.stop_agent());
    lab.start_agent_except(second, &["default/web"]);
    assert_eq!(
        lab.enforcer
            .dataplane()
            .adopted(npenforce_common::map_names::IFACES),
        second.map_sizes == first.map_sizes
    );
    let release = release_older_judges(&mut lab);
    check(&lab, "web's veth still runs the first agent's programs");
    let kept = |waiting_for: Vec<u32>| JudgesRelease {
        released: 0,
        kept: 1,
        waiting_for,
    };
    let expected = if unknown {
        kept(vec![])
    } else {
        kept(vec![web_ifindex])
    };
    assert_eq!(
        release, expected,
        "{tag}: the first agent's array may still be used on web's veth"
    );

    lab.attach("default", "web");
    let release = release_older_judges(&mut lab);
    let expected = if unknown {
        kept(vec![])
    } else {
        JudgesRelease {
            released: 1,
            ..Default::default()
        }
    };
    assert_eq!(
        release, expected,
        "{tag}: the second agent runs on every veth"
    );
    check(&lab, "the second agent's programs on every veth");
}

#[test]
fn egress_to_other_nodes_is_judged_at_the_uplink_after_nat() {
    if !kernel_tests_enabled("egress_to_other_nodes_is_judged_at_the_uplink_after_nat") {
        return;
    }
    let mut lab = web_lab("upl");
    lab.namespace("remote", &[]);
    let far_web = lab.remote_pod(PodSpec {
        namespace: "remote",
        name: "far-web",
        labels: &[("app", "far-web")],
        ports: &[],
    });
    lab.remote_pod(PodSpec {
        namespace: "remote",
        name: "far-db",
        labels: &[("app", "far-db")],
        ports: &[],
    });
    lab.serve("remote", "far-web", &[(80, Protocol::Tcp)]);
    lab.serve("remote", "far-db", &[(80, Protocol::Tcp)]);
    let vip: std::net::IpAddr = "10.96.0.20".parse().expect("literal");
    lab.lab
        .add_service(
            vip,
            80,
            std::net::IpAddr::V4(far_web.ipv4),
            80,
            Protocol::Tcp,
        )
        .expect("service to a remote backend");
    let client = lab.lab_pod("default", "client").clone();
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("remote", "far-db"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "no policy yet"
        );
    }
    // client: egress only to far-web pods; ingress isolated with nothing allowed, so replies
    // only come back through conntrack (uplink ingress recognises them before the un-NAT).
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: far-web}}}]
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("remote", "far-web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "egress to far-web, replies pass"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("remote", "far-db"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "egress to far-db denied at the uplink"
        );
    }
    let counters = lab.enforcer.node_counters().expect("counters");
    assert!(
        counters.drops(npenforce_common::drop_reason::EGRESS_DENIED) >= 2
            && counters.drops(npenforce_common::drop_reason::INGRESS_DENIED) == 0,
        "far-db is refused on the way out (egress at the uplink), not by dropping its replies: {counters:?}"
    );
    assert_eq!(
        lab.lab.probe(&client, vip, 80, Protocol::Tcp),
        ALLOWED,
        "via the VIP to the remote backend, reply un-NATed"
    );
    // Remote pods reaching an isolated local pod: web admits only namespace `remote` pods
    // labelled far-web.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: far-web}}}]
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("remote", "far-web"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "far-web -> web"
        );
        assert_eq!(
            lab.probe(
                ("remote", "far-db"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "far-db -> web"
        );
    }
}

#[test]
fn cidr_with_except_both_directions_and_families() {
    if !kernel_tests_enabled("cidr_with_except_both_directions_and_families") {
        return;
    }
    let mut lab = web_lab("cidr");
    lab.serve("other", "monitor", &[(81, Protocol::Tcp)]);
    // client may reach the pod range except web's addresses; web admits the range except
    // monitor's addresses, on port 80 only.
    let web = lab.lab_pod("default", "web").clone();
    let monitor = lab.lab_pod("other", "monitor").clone();
    lab.policy(&format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-cidr, namespace: default}}
spec:
  podSelector: {{matchExpressions: [{{key: app, operator: DoesNotExist}}]}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}
    - ipBlock: {{cidr: "fd00:10:244::/64", except: ["{}/128"]}}
"#,
        web.ipv4, web.ipv6
    ));
    lab.policy(&format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-cidr, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: 10.244.1.0/24, except: [{}/32]}}
    - ipBlock: {{cidr: "fd00:10:244::/64", except: ["{}/128"]}}
    ports: [{{port: 80}}]
"#,
        monitor.ipv4, monitor.ipv6
    ));
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("other", "monitor"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "client -> monitor inside the CIDR"
        );
        assert_eq!(
            lab.probe(
                ("default", "client"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "client -> web: excepted from client's egress"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            BLOCKED,
            "monitor excepted from web's ingress"
        );
        assert_eq!(
            lab.probe(
                ("default", "web"),
                ("default", "client"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "web is not isolated for egress, client not for ingress"
        );
    }
    // The union: a second policy admits monitor by pod selector although the ipBlock
    // excepts its address.
    lab.policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-monitor, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: operations}}}]
"#,
    );
    for v6 in [false, true] {
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                80,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "union of both policies"
        );
        assert_eq!(
            lab.probe(
                ("other", "monitor"),
                ("default", "web"),
                81,
                Protocol::Tcp,
                v6
            ),
            ALLOWED,
            "the namespace rule has no ports: every port"
        );
    }
}
