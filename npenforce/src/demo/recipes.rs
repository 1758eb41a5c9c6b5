//! The public NetworkPolicy recipes (github.com/ahmetb/kubernetes-network-policy-recipes)
//! and the two seed cards (NP-05, NP-07) as data: each policy as published, and every probe
//! of its "Try it out" section (plus a few that show what the policy leaves alone), with the
//! verdict the NetworkPolicy API gives. Shared by `npenforce demo` and
//! `tests/agent_recipes.rs`.
//!
//! The lab behind them ([`world`]) holds every pod the recipes use. Probes that the recipes
//! run as `wget http://web.default` go to the Service VIP (the probe resolves the name to the
//! VIP itself; kube-proxy-style DNAT in the node sends it to the pod). "External" is a host
//! outside the cluster (203.0.113.7, 2001:db8::7; in no manifest) behind the node's uplink.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::world::{Endpoint, Probe, Source, Via, World};
use crate::lab::Protocol::{Tcp, Udp};

/// The node every pod of the lab runs on.
pub const NODE: &str = "kind-worker";

/// The recipes' cluster.
pub fn world() -> World {
    let mut w = World::new(NODE);
    w.ns("default", "")
        .ns("kube-system", "")
        .ns("other", "team=operations")
        .ns("secondary", "")
        .ns("foo", "")
        .ns("dev", "purpose=testing")
        .ns("prod", "purpose=production");
    let http80: &[(&str, u16, _)] = &[("http", 80, Tcp)];
    w.pod("default/web", "app=web", http80)
        // `kubectl run test-$RANDOM` labels its pod run=<name>: "without labels" in the
        // cards means without the labels the policies look at.
        .pod("default/test", "run=test", http80)
        .pod("default/test-monitoring", "type=monitoring", http80)
        .pod("other/test", "run=test", http80)
        .pod("other/test-monitoring", "type=monitoring", http80)
        .pod("secondary/test", "run=test", http80)
        .pod("foo/test", "run=test", http80)
        .pod("dev/test", "run=test", http80)
        .pod("prod/test", "run=test", http80)
        .pod("default/apiserver", "app=bookstore,role=api", http80)
        .pod("default/frontend", "app=bookstore,role=frontend", &[])
        .pod(
            "default/app-on-two-ports",
            "app=apiserver",
            &[("http", 8000, Tcp), ("metrics", 5000, Tcp)],
        )
        .pod("default/monitoring", "role=monitoring", &[])
        .pod(
            "default/db",
            "app=bookstore,role=db",
            &[("redis", 6379, Tcp)],
        )
        .pod("default/search", "app=bookstore,role=search", &[])
        .pod("default/catalog", "app=inventory,role=web", &[])
        .pod("default/other-app", "app=other", &[])
        .pod("default/foo", "app=foo", &[])
        .pod(
            "kube-system/coredns",
            "k8s-app=kube-dns",
            &[("dns", 53, Udp), ("dns-tcp", 53, Tcp)],
        );
    w.service(
        "web.default",
        Ipv4Addr::new(10, 96, 0, 20),
        Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x20),
        "default/web",
        &[(80, 80, Tcp)],
    )
    .service(
        "apiserver.default",
        Ipv4Addr::new(10, 96, 0, 30),
        Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x30),
        "default/apiserver",
        &[(80, 80, Tcp)],
    )
    // Recipe 09 calls this Service `apiserver` too; recipe 02's apiserver has that name here.
    .service(
        "app-on-two-ports.default",
        Ipv4Addr::new(10, 96, 0, 40),
        Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x40),
        "default/app-on-two-ports",
        &[(8001, 8000, Tcp), (5001, 5000, Tcp)],
    )
    .service(
        "db.default",
        Ipv4Addr::new(10, 96, 0, 50),
        Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x50),
        "default/db",
        &[(6379, 6379, Tcp)],
    )
    .service(
        "kube-dns.kube-system",
        Ipv4Addr::new(10, 96, 0, 10),
        Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa),
        "kube-system/coredns",
        &[(53, 53, Udp), (53, 53, Tcp)],
    );
    w.external(&[(80, Tcp), (53, Udp), (53, Tcp)]);
    w
}

/// A policy manifest of `deploy/recipes/`, the folder that `deploy/kind/run-recipes.sh`
/// applies to a kind cluster: the demo and the tests run the very files the cluster gets.
macro_rules! manifest {
    ($file:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/recipes/",
            $file
        ))
    };
}

/// A recipe: its policies as published and its probes.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Short id: `01`, `02a`, `11b`, ...
    pub id: &'static str,
    pub title: &'static str,
    /// Where it comes from (file of the recipes repository, seed card).
    pub source: &'static str,
    /// NetworkPolicy YAML documents (one manifest file).
    pub policies: Vec<&'static str>,
    pub probes: Vec<Probe>,
    /// What the reader should know (how the lab models something, where the text differs).
    pub notes: Vec<&'static str>,
}

fn pod(key: &str) -> Source {
    Source::Pod(key.to_string())
}

fn to_pod(key: &str) -> Endpoint {
    Endpoint::Pod(key.to_string())
}

fn svc(name: &str) -> Endpoint {
    Endpoint::Service(name.to_string())
}

fn probe(note: &str, from: Source, to: Endpoint, port: u16, via: Via, allowed: bool) -> Probe {
    Probe {
        note: note.to_string(),
        from,
        to,
        port,
        via,
        allowed,
    }
}

/// `wget -qO- --timeout=2 http://<to>:<port>`.
fn http(note: &str, from: Source, to: Endpoint, port: u16, allowed: bool) -> Probe {
    probe(note, from, to, port, Via::Http, allowed)
}

fn web(note: &str, from: Source, allowed: bool) -> Probe {
    http(note, from, svc("web.default"), 80, allowed)
}

const ALLOWED: bool = true;
const BLOCKED: bool = false;

pub const WEB_DENY_ALL: &str = manifest!("01-web-deny-all.yaml");

pub const DEFAULT_DENY_ALL: &str = manifest!("03-default-deny-all.yaml");

/// Recipe 14 before the recipe was changed to allow DNS to kube-dns only.
pub const FOO_DENY_EXTERNAL_EGRESS_EARLIER: &str =
    manifest!("14-earlier-foo-deny-external-egress.yaml");

/// Every recipe, in order.
pub fn recipes() -> Vec<Recipe> {
    let dns_udp = |note: &str, from: &str, allowed| {
        probe(
            note,
            pod(from),
            svc("kube-dns.kube-system"),
            53,
            Via::Udp,
            allowed,
        )
    };
    let dns_tcp = |note: &str, from: &str, allowed| {
        probe(
            note,
            pod(from),
            svc("kube-dns.kube-system"),
            53,
            Via::Tcp,
            allowed,
        )
    };
    vec![
        Recipe {
            id: "00",
            title: "no policy: everything reaches everything",
            source: "baseline",
            policies: vec![],
            probes: vec![
                web("kubectl run test: wget http://web", pod("default/test"), ALLOWED),
                web("from another namespace", pod("other/test"), ALLOWED),
                http("external client", Source::External, to_pod("default/web"), 80, ALLOWED),
                http("foo to the Internet", pod("default/foo"), Endpoint::External, 80, ALLOWED),
                dns_udp("DNS to kube-dns", "default/foo", ALLOWED),
                probe("redis", pod("default/other-app"), svc("db.default"), 6379, Via::Tcp, ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "01",
            title: "DENY all traffic to an application",
            source: "01-deny-all-traffic-to-an-application.md",
            policies: vec![WEB_DENY_ALL],
            probes: vec![
                web("Try it out: traffic dropped", pod("default/test"), BLOCKED),
                web("from another namespace", pod("other/test"), BLOCKED),
                http("external client", Source::External, to_pod("default/web"), 80, BLOCKED),
                http("other apps are not isolated", pod("default/test"), svc("apiserver.default"), 80, ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "02",
            title: "LIMIT traffic to an application",
            source: "02-limit-traffic-to-an-application.md",
            policies: vec![manifest!("02-api-allow.yaml")],
            probes: vec![
                http("pod without app=bookstore: blocked", pod("default/test"), svc("apiserver.default"), 80, BLOCKED),
                http("app=bookstore,role=frontend: allowed", pod("default/frontend"), svc("apiserver.default"), 80, ALLOWED),
                http("podSelector: same namespace only", pod("other/test"), svc("apiserver.default"), 80, BLOCKED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "02a",
            title: "ALLOW all traffic to an application (over web-deny-all)",
            source: "02a-allow-all-traffic-to-an-application.md",
            policies: vec![
                manifest!("02a-web-allow-all.yaml"),
                WEB_DENY_ALL,
            ],
            probes: vec![
                web("Try it out: traffic is allowed", pod("default/test"), ALLOWED),
                web("other namespaces too", pod("other/test"), ALLOWED),
                http("an empty rule admits every source", Source::External, to_pod("default/web"), 80, ALLOWED),
            ],
            notes: vec!["web-deny-all (01) is applied too, as the recipe asks: web-allow-all makes it void."],
        },
        Recipe {
            id: "03",
            title: "DENY all non-whitelisted traffic to a namespace",
            source: "03-deny-all-non-whitelisted-traffic-in-the-namespace.md",
            policies: vec![DEFAULT_DENY_ALL],
            probes: vec![
                web("within default", pod("default/test"), BLOCKED),
                http("every pod of default", pod("default/test-monitoring"), svc("apiserver.default"), 80, BLOCKED),
                web("from another namespace", pod("secondary/test"), BLOCKED),
                http("other namespaces are not isolated", pod("default/web"), to_pod("secondary/test"), 80, ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "04",
            title: "DENY all traffic from other namespaces",
            source: "04-deny-traffic-from-other-namespaces.md",
            policies: vec![manifest!("04-deny-from-other-namespaces.yaml")],
            probes: vec![
                web("Try it out: from namespace foo: blocked", pod("foo/test"), BLOCKED),
                web("any pod in default works", pod("default/test"), ALLOWED),
                http("external client", Source::External, to_pod("default/web"), 80, BLOCKED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "05",
            title: "ALLOW traffic to an application from all namespaces (seed card NP-05)",
            source: "05-allow-traffic-from-all-namespaces.md, seed card NP-05",
            policies: vec![manifest!("05-web-allow-all-namespaces.yaml")],
            probes: vec![
                web("NP-05 Task 4: from secondary: allowed", pod("secondary/test"), ALLOWED),
                web("NP-05 acceptance: from default too", pod("default/test"), ALLOWED),
                web("any namespace (other)", pod("other/test-monitoring"), ALLOWED),
                http("namespaceSelector {} is pods only", Source::External, to_pod("default/web"), 80, BLOCKED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "06",
            title: "ALLOW all traffic from a namespace",
            source: "06-allow-traffic-from-a-namespace.md",
            policies: vec![manifest!("06-web-allow-prod.yaml")],
            probes: vec![
                web("from dev (purpose=testing): blocked", pod("dev/test"), BLOCKED),
                web("from prod (purpose=production): allowed", pod("prod/test"), ALLOWED),
                web("its own namespace is not selected", pod("default/test"), BLOCKED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "07",
            title: "ALLOW traffic from some pods in another namespace (seed card NP-07)",
            source: "07-allow-traffic-from-some-pods-in-another-namespace.md, seed card NP-07",
            policies: vec![manifest!("07-web-allow-all-ns-monitoring.yaml")],
            probes: vec![
                web("NP-07 Task 4: default, no labels", pod("default/test"), BLOCKED),
                web("NP-07 Task 5: default, type=monitoring", pod("default/test-monitoring"), BLOCKED),
                web("NP-07 Task 6: other, no labels", pod("other/test"), BLOCKED),
                web("NP-07 Task 7: other, type=monitoring", pod("other/test-monitoring"), ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "07-or",
            title: "the OR form of NP-07 (two peers instead of one)",
            source: "seed card NP-07, \"AND vs OR Conditions\"",
            policies: vec![manifest!("07-or-web-allow-or.yaml")],
            probes: vec![
                web("default, no labels", pod("default/test"), BLOCKED),
                web("type=monitoring in the same namespace", pod("default/test-monitoring"), ALLOWED),
                web("any pod of team=operations", pod("other/test"), ALLOWED),
                web("both", pod("other/test-monitoring"), ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "08",
            title: "ALLOW traffic from external clients",
            source: "08-allow-external-traffic.md",
            policies: vec![
                manifest!("08-web-allow-external.yaml"),
                DEFAULT_DENY_ALL,
            ],
            probes: vec![
                http("external client to the pod", Source::External, to_pod("default/web"), 80, ALLOWED),
                http("external client through the Service VIP", Source::External, svc("web.default"), 80, ALLOWED),
                web("pods too", pod("other/test"), ALLOWED),
                http("the rest of default stays denied", Source::External, svc("apiserver.default"), 80, BLOCKED),
            ],
            notes: vec![
                "default-deny-all (03) is applied too: the recipe's use case is a namespace that denies all non-whitelisted traffic.",
                "The external client is a host behind the node's uplink (203.0.113.7, 2001:db8::7), in no manifest; it reaches the pod directly and through the Service VIP, as from a load balancer.",
            ],
        },
        Recipe {
            id: "09",
            title: "ALLOW traffic only to a port of an application",
            source: "09-allow-traffic-only-to-a-port.md",
            policies: vec![manifest!("09-api-allow-5000.yaml")],
            probes: vec![
                http("no labels: 8001 (-> 8000) blocked", pod("default/test"), svc("app-on-two-ports.default"), 8001, BLOCKED),
                http("no labels: 5001 (-> 5000) blocked", pod("default/test"), svc("app-on-two-ports.default"), 5001, BLOCKED),
                http("role=monitoring: 8001 (-> 8000) blocked", pod("default/monitoring"), svc("app-on-two-ports.default"), 8001, BLOCKED),
                http("role=monitoring: 5001 (-> 5000) allowed", pod("default/monitoring"), svc("app-on-two-ports.default"), 5001, ALLOWED),
            ],
            notes: vec![
                "The recipe's Service (8001->8000, 5001->5000) is called app-on-two-ports here, as recipe 02's apiserver is in the same lab; the policy is judged on the pod ports after the Service DNAT.",
            ],
        },
        Recipe {
            id: "10",
            title: "ALLOW traffic from apps using multiple selectors",
            source: "10-allowing-traffic-with-multiple-selectors.md",
            policies: vec![manifest!("10-redis-allow-services.yaml")],
            probes: vec![
                probe("catalog (app=inventory,role=web): works", pod("default/catalog"), svc("db.default"), 6379, Via::Tcp, ALLOWED),
                probe("app=other: blocked", pod("default/other-app"), svc("db.default"), 6379, Via::Tcp, BLOCKED),
                probe("search", pod("default/search"), svc("db.default"), 6379, Via::Tcp, ALLOWED),
                probe("api", pod("default/apiserver"), svc("db.default"), 6379, Via::Tcp, ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "11",
            title: "DENY egress traffic from an application",
            source: "11-deny-egress-traffic-from-an-application.md",
            policies: vec![manifest!("11-foo-deny-egress.yaml")],
            probes: vec![
                dns_udp("DNS fails (\"bad address\")", "default/foo", BLOCKED),
                web("app=foo to web", pod("default/foo"), BLOCKED),
                http("app=foo to www.example.com", pod("default/foo"), Endpoint::External, 80, BLOCKED),
                web("other pods are not isolated", pod("default/test"), ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "11b",
            title: "DENY egress traffic from an application, allowing DNS",
            source: "11-deny-egress-traffic-from-an-application.md (\"Allowing DNS traffic\")",
            policies: vec![manifest!("11b-foo-deny-egress.yaml")],
            probes: vec![
                dns_udp("DNS to kube-dns resolves (udp)", "default/foo", ALLOWED),
                dns_tcp("DNS to kube-dns resolves (tcp)", "default/foo", ALLOWED),
                web("wget http://web: timed out", pod("default/foo"), BLOCKED),
                http("wget www.example.com: timed out", pod("default/foo"), Endpoint::External, 80, BLOCKED),
                probe("DNS elsewhere", pod("default/foo"), Endpoint::External, 53, Via::Udp, BLOCKED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "12",
            title: "DENY all non-whitelisted traffic from a namespace (egress)",
            source: "12-deny-all-non-whitelisted-traffic-from-the-namespace.md",
            policies: vec![manifest!("12-default-deny-all-egress.yaml")],
            probes: vec![
                web("within default", pod("default/test"), BLOCKED),
                dns_udp("DNS resolution too", "default/test", BLOCKED),
                http("to the Internet", pod("default/foo"), Endpoint::External, 80, BLOCKED),
                web("ingress from other namespaces unaffected", pod("other/test"), ALLOWED),
            ],
            notes: vec![],
        },
        Recipe {
            id: "14",
            title: "DENY external egress traffic (current text: DNS to kube-dns only)",
            source: "14-deny-external-egress-traffic.md",
            policies: vec![manifest!("14-foo-deny-external-egress.yaml")],
            probes: vec![
                dns_udp("able to resolve (udp)", "default/foo", ALLOWED),
                dns_tcp("able to resolve (tcp)", "default/foo", ALLOWED),
                http("wget www.example.com: blocked", pod("default/foo"), Endpoint::External, 80, BLOCKED),
                probe("DNS to an outside server", pod("default/foo"), Endpoint::External, 53, Via::Udp, BLOCKED),
                web("to web: blocked by this policy (see note)", pod("default/foo"), BLOCKED),
            ],
            notes: vec![
                "This is the recipe's current policy: egress only to kube-dns pods in kube-system on port 53.",
                "Its \"Try it out\" still shows app=foo reaching the web Service; that was written for the earlier policy (DNS anywhere plus `to: namespaceSelector: {}`), shown as 14-earlier. Under the current policy the API says web is blocked, and so does npenforce.",
            ],
        },
        Recipe {
            id: "14-earlier",
            title: "DENY external egress traffic (earlier text: DNS anywhere, all pods)",
            source: "14-deny-external-egress-traffic.md before the kube-dns change",
            policies: vec![FOO_DENY_EXTERNAL_EGRESS_EARLIER],
            probes: vec![
                web("Try it out: connection allowed", pod("default/foo"), ALLOWED),
                http("www.example.com: blocked", pod("default/foo"), Endpoint::External, 80, BLOCKED),
                probe("DNS anywhere (external)", pod("default/foo"), Endpoint::External, 53, Via::Udp, ALLOWED),
                dns_udp("DNS to kube-dns", "default/foo", ALLOWED),
            ],
            notes: vec![],
        },
    ]
}
