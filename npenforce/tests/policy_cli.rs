//! `npenforce check` and `npenforce matrix` on a folder of manifests (seed NP-07 in
//! `tests/fixtures/policy-np07`: multi-document YAML, a `List`, JSON, a skipped kind).

use std::path::PathBuf;

use npenforce::cli::check::{self, load_cluster, render_text, CheckArgs, OutputFormat};
use npenforce::cli::matrix::{self, truth_table, MatrixArgs};
use npenforce::policy::{explain, ObjectKey, Pod};
use npenforce_common::ip_proto::TCP;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy-np07")
}

fn args(from: &str, to: &str, port: u16) -> CheckArgs {
    CheckArgs {
        manifests: fixtures(),
        from: from.into(),
        to: to.into(),
        port,
        protocol: "TCP".into(),
        output: OutputFormat::Text,
    }
}

#[test]
fn loads_every_supported_form() {
    let c = load_cluster(&fixtures()).expect("fixtures load");
    assert_eq!(c.snapshot.namespaces.len(), 2);
    assert_eq!(c.snapshot.pods.len(), 6, "the Service is skipped");
    assert_eq!(c.snapshot.policies.len(), 1);
    assert!(c.state.validation_errors.is_empty());
}

#[test]
fn check_exit_codes_follow_the_seed_probes() {
    let run = |from, to, port| check::run(&args(from, to, port)).expect("check runs");
    assert_eq!(run("other/test-monitoring", "default/web", 80), 0);
    assert_eq!(run("other/test-plain", "default/web", 80), 1);
    assert_eq!(run("default/test-monitoring", "default/web", 80), 1);
    assert_eq!(run("default/test-plain", "default/web", 80), 1);
    // The named port `http` is 80 on web: 81 is not allowed.
    assert_eq!(run("other/test-monitoring", "default/web", 81), 1);
    // web is not isolated for egress, and the others not at all.
    assert_eq!(run("default/web", "other/test-plain", 443), 0);
    // An external address.
    assert_eq!(run("192.0.2.1", "default/web", 80), 1);
    let mut json = args("other/test-monitoring", "default/web", 80);
    json.output = OutputFormat::Json;
    assert_eq!(check::run(&json).expect("json output"), 0);
}

#[test]
fn check_reports_input_errors() {
    let err = check::run(&args("default/nope", "default/web", 80)).expect_err("unknown pod");
    assert!(err.to_string().contains("no such pod"), "{err}");
    let err = check::run(&args("default/pending", "default/web", 80)).expect_err("no IP");
    assert!(err.to_string().contains("has no IP"), "{err}");
    let err = check::run(&args("web", "default/web", 80)).expect_err("bad form");
    assert!(err.to_string().contains("NAMESPACE/POD"), "{err}");
    let mut missing = args("default/web", "default/web", 80);
    missing.manifests = PathBuf::from("/nonexistent/npenforce");
    assert!(check::run(&missing).is_err());
}

#[test]
fn explanations_name_the_policy_and_the_rule() {
    let c = load_cluster(&fixtures()).expect("fixtures load");
    let ip = |ns: &str, name: &str| c.snapshot.pods[&ObjectKey::new(ns, name)].ips[0];
    let web = ip("default", "web");

    let ok = explain(
        &c.state,
        &c.entries,
        ip("other", "test-monitoring"),
        web,
        TCP,
        80,
    );
    assert!(ok.allowed);
    assert_eq!(
        ok.ingress.isolating_policies,
        vec!["default/web-allow-all-ns-monitoring".to_string()]
    );
    assert_eq!(
        ok.ingress.allowed_by.as_deref(),
        Some("NetworkPolicy default/web-allow-all-ns-monitoring spec.ingress[0]")
    );
    assert!(!ok.egress.isolated);

    let denied = explain(
        &c.state,
        &c.entries,
        ip("default", "test-plain"),
        web,
        TCP,
        80,
    );
    assert!(!denied.allowed);
    let text = render_text(&denied, "default/test-plain", "default/web");
    assert!(text.starts_with("DENIED: default/test-plain"), "{text}");
    assert!(
        text.contains("isolated by default/web-allow-all-ns-monitoring"),
        "{text}"
    );
    assert!(
        text.contains("no rule of the isolating policies allows from"),
        "{text}"
    );

    let port = explain(
        &c.state,
        &c.entries,
        ip("other", "test-monitoring"),
        web,
        TCP,
        81,
    );
    assert!(
        port.ingress.reason.contains("none on TCP/81"),
        "{}",
        port.ingress.reason
    );

    let json = serde_json::to_value(&ok).expect("serializable");
    assert_eq!(json["allowed"], true);
    assert_eq!(json["ingress"]["pod"], "default/web");
}

#[test]
fn matrix_prints_the_upstream_table_form() {
    let c = load_cluster(&fixtures()).expect("fixtures load");
    let pods: Vec<&Pod> = c
        .snapshot
        .pods
        .values()
        .filter(|p| !p.ips.is_empty())
        .map(|p| p.as_ref())
        .collect();
    let t = truth_table(&c.entries, &pods, TCP, 80);
    let expected = "\
-\tdefault/test-monitoring\tdefault/test-plain\tdefault/web\tother/test-monitoring\tother/test-plain
default/test-monitoring\t.\t.\tX\t.\t.
default/test-plain\t.\t.\tX\t.\t.
default/web\t.\t.\t.\t.\t.
other/test-monitoring\t.\t.\t.\t.\t.
other/test-plain\t.\t.\tX\t.\t.
";
    assert_eq!(t, expected);
    let code = matrix::run(&MatrixArgs {
        manifests: fixtures(),
        port: 80,
        protocol: "tcp".into(),
    })
    .expect("matrix runs");
    assert_eq!(code, 0);
}
