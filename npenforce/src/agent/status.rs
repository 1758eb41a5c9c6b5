//! What the agent publishes: the `/status` document and the `/metrics` counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// The `/status` document.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Increases each time a change of the source has been fully applied to the kernel.
    pub revision: u64,
    /// The initial state has been applied (what `/readyz` reports).
    pub ready: bool,
    /// The node whose pods are enforced (`null`: all nodes).
    pub node: Option<String>,
    /// Pods of this node, by `namespace/name`.
    pub pods: Vec<PodStatus>,
    /// Policies that are not enforced as written (see the compiler's fail-closed rule).
    pub validation_errors: Vec<ValidationErrorStatus>,
    /// Inputs the source skipped (malformed objects, manifest files that do not parse).
    pub invalid_inputs: Vec<InvalidInput>,
    /// The last apply to the kernel.
    pub last_apply: Option<ApplyStatus>,
    /// Set while the kernel could not be brought to the desired state (retried).
    pub enforcer_error: Option<String>,
    /// The last transient error of the source (API server unreachable, ...).
    pub last_source_error: Option<String>,
}

/// One pod of this node.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// The id the kernel knows the pod by (the `pod_id` of metrics and drop logs).
    pub pod_id: Option<u32>,
    /// Whether the pod has kernel entries (a pod without an IP yet, or host-network, has
    /// none).
    pub enforced: bool,
    pub ingress: DirectionStatus,
    pub egress: DirectionStatus,
}

/// Isolation of one direction of a pod.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DirectionStatus {
    pub isolated: bool,
    /// `namespace/name` of the policies that isolate it.
    pub policies: Vec<String>,
}

/// A policy validation error.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ValidationErrorStatus {
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// Problems of one skipped input.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InvalidInput {
    pub origin: String,
    pub errors: Vec<String>,
}

/// The last apply.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyStatus {
    pub unix_seconds: f64,
    pub duration_seconds: f64,
    /// Map entries written or deleted.
    pub entries: u64,
    /// `true` when it was a full reconcile (start, or recovery after an error).
    pub full: bool,
}

/// Upper bounds of the apply duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// Counters and gauges for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub revision: u64,
    pub ready: bool,
    pub pods_enforced: u64,
    pub map_entries: BTreeMap<&'static str, u64>,
    pub applied_entries_total: u64,
    pub applies_total: u64,
    pub reconciles_total: u64,
    pub enforcer_errors_total: u64,
    pub source_changes_total: u64,
    pub source_errors_total: u64,
    pub validation_errors: u64,
    pub invalid_inputs: u64,
    pub last_apply_unix_seconds: f64,
    apply_buckets: [u64; BUCKETS.len()],
    apply_count: u64,
    apply_sum: f64,
}

impl Metrics {
    /// Records the duration of one apply or reconcile.
    pub fn observe_apply(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, n) in BUCKETS.iter().zip(self.apply_buckets.iter_mut()) {
            if s <= *b {
                *n += 1;
            }
        }
        self.apply_count += 1;
        self.apply_sum += s;
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "npenforce_revision",
            "gauge",
            "Number of source changes fully applied to the kernel.",
            self.revision.to_string(),
        );
        metric(
            "npenforce_ready",
            "gauge",
            "1 once the initial state has been applied.",
            u8::from(self.ready).to_string(),
        );
        metric(
            "npenforce_pods_enforced",
            "gauge",
            "Pods of this node with kernel entries.",
            self.pods_enforced.to_string(),
        );
        metric(
            "npenforce_applied_entries_total",
            "counter",
            "Map entries written or deleted.",
            self.applied_entries_total.to_string(),
        );
        metric(
            "npenforce_applies_total",
            "counter",
            "Diffs applied to the kernel.",
            self.applies_total.to_string(),
        );
        metric(
            "npenforce_reconciles_total",
            "counter",
            "Full reconciles of the kernel maps (start and recovery).",
            self.reconciles_total.to_string(),
        );
        metric(
            "npenforce_enforcer_errors_total",
            "counter",
            "Failed applies or reconciles (retried).",
            self.enforcer_errors_total.to_string(),
        );
        metric(
            "npenforce_source_changes_total",
            "counter",
            "Changes received from the source.",
            self.source_changes_total.to_string(),
        );
        metric(
            "npenforce_source_errors_total",
            "counter",
            "Transient source errors (API server unreachable, watch failures).",
            self.source_errors_total.to_string(),
        );
        metric(
            "npenforce_validation_errors",
            "gauge",
            "Policy validation errors (those policies fail closed).",
            self.validation_errors.to_string(),
        );
        metric(
            "npenforce_invalid_inputs",
            "gauge",
            "Inputs skipped by the source (malformed objects or manifest files).",
            self.invalid_inputs.to_string(),
        );
        metric(
            "npenforce_last_apply_timestamp_seconds",
            "gauge",
            "Unix time of the last successful apply.",
            format_float(self.last_apply_unix_seconds),
        );
        let _ = writeln!(
            o,
            "# HELP npenforce_map_entries Entries in each policy map.\n# TYPE npenforce_map_entries gauge"
        );
        for (map, n) in &self.map_entries {
            let _ = writeln!(o, "npenforce_map_entries{{map=\"{map}\"}} {n}");
        }
        let name = "npenforce_apply_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time to apply a diff or reconcile the kernel maps.\n# TYPE {name} histogram"
        );
        for (b, n) in BUCKETS.iter().zip(self.apply_buckets.iter()) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {n}", format_float(*b));
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", self.apply_count);
        let _ = writeln!(o, "{name}_sum {}", format_float(self.apply_sum));
        let _ = writeln!(o, "{name}_count {}", self.apply_count);
        o
    }
}

fn format_float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_text_format() {
        let mut m = Metrics {
            revision: 3,
            ..Metrics::default()
        };
        m.map_entries.insert("peers", 7);
        m.observe_apply(Duration::from_micros(300));
        m.observe_apply(Duration::from_millis(20));
        let text = m.render();
        assert!(text.contains("\nnpenforce_revision 3\n"), "{text}");
        assert!(
            text.contains("npenforce_map_entries{map=\"peers\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("npenforce_apply_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("npenforce_apply_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("npenforce_apply_duration_seconds_count 2\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("a number");
        }
    }
}
