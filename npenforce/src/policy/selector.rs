//! Label selectors (`matchLabels` + `matchExpressions`), validated and ready to match.
//!
//! API reference (LabelSelector): "The requirements are ANDed. An empty label selector
//! matches all objects." `matchLabels` entries are equivalent to `In` requirements with a
//! single value.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `In`: the label is present and its value is one of the set (never empty).
    In(String, BTreeSet<String>),
    /// `NotIn`: the label is absent, or present with a value outside the set.
    NotIn(String, BTreeSet<String>),
    /// `Exists`: the label is present.
    Exists(String),
    /// `DoesNotExist`: the label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// Whether selector values are checked as label values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelValues {
    /// As the API server checks an object it is asked to create (and files read from disk,
    /// which nobody checked): a value no label can have is an error.
    #[default]
    Checked,
    /// As the API server serves objects stored before it checked selector values (it keeps
    /// accepting updates of those, `AllowInvalidLabelValueInSelector`): such a value is kept
    /// and matches no label, so that an agent upgrade does not fail those policies closed.
    Unchecked,
}

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    match_labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The empty selector: matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Whether this selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.requirements.is_empty()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Validates a Kubernetes selector, its values checked. Errors are `(field path relative
    /// to the selector, message)`, e.g. `("matchExpressions[0].operator", "...")`.
    pub fn parse(selector: &LabelSelector) -> Result<Selector, Vec<(String, String)>> {
        Selector::parse_with(selector, LabelValues::Checked)
    }

    /// [`Selector::parse`], with `matchExpressions` values checked or not.
    pub fn parse_with(
        selector: &LabelSelector,
        label_values: LabelValues,
    ) -> Result<Selector, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut match_labels = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            if let Err(e) = validate_key(k).and_then(|()| validate_value(v)) {
                errors.push((format!("matchLabels[{k:?}]"), e));
            }
            match_labels.push((k.clone(), v.clone()));
        }
        let mut requirements = Vec::new();
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            if let Err(e) = validate_key(&expr.key) {
                errors.push((format!("{field}.key"), e));
            }
            // As the API server: a value no label can have would make a `NotIn` match every
            // pod, where upstream refuses the object.
            if label_values == LabelValues::Checked {
                for (j, value) in expr.values.iter().flatten().enumerate() {
                    if let Err(e) = validate_value(value) {
                        errors.push((format!("{field}.values[{j}]"), e));
                    }
                }
            }
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    errors.push((
                        format!("{field}.values"),
                        format!("must be specified when `operator` is '{}'", expr.operator),
                    ));
                    continue;
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    errors.push((
                        format!("{field}.values"),
                        format!(
                            "may not be specified when `operator` is '{}'",
                            expr.operator
                        ),
                    ));
                    continue;
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    errors.push((
                        format!("{field}.operator"),
                        format!(
                            "unsupported operator {other:?}: expected In, NotIn, Exists or DoesNotExist"
                        ),
                    ));
                    continue;
                }
            };
            requirements.push(req);
        }
        if errors.is_empty() {
            Ok(Selector {
                match_labels,
                requirements,
            })
        } else {
            Err(errors)
        }
    }
}

/// A label key as the API server validates it (a qualified name): an optional DNS subdomain
/// prefix and `/`, then a name of at most 63 characters, alphanumeric at both ends, with `-`,
/// `_` and `.` inside. A key that no label can have would make a `NotIn` or `DoesNotExist`
/// requirement match every pod, where the API server refuses the object.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns_subdomain(prefix) {
            return Err(format!(
                "invalid label key {key:?}: the prefix must be a DNS subdomain (lowercase \
                 alphanumerics, '-' and '.', at most 253 characters)"
            ));
        }
    }
    if !is_label_word(name) {
        return Err(format!(
            "invalid label key {key:?}: the name must be 1 to 63 characters, alphanumeric at \
             both ends, with '-', '_' or '.' between"
        ));
    }
    Ok(())
}

/// A label value as the API server validates it: empty, or a label word.
fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_word(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters, alphanumeric at both ends, \
             with '-', '_' or '.' between"
        ))
    }
}

/// At most 63 characters, alphanumeric at both ends, `-`, `_` and `.` inside.
fn is_label_word(word: &str) -> bool {
    let bytes = word.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A DNS-1123 subdomain: dot-separated labels of lowercase alphanumerics and `-`,
/// alphanumeric at both ends, at most 253 characters in all.
fn is_dns_subdomain(text: &str) -> bool {
    let is_lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    text.len() <= 253
        && text.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    is_lower_alnum(first)
                        && is_lower_alnum(last)
                        && bytes.iter().all(|b| is_lower_alnum(b) || *b == b'-')
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        })
        .expect("valid selector")
    }

    #[test]
    fn label_words_are_at_most_63_characters_alphanumeric_at_both_ends() {
        assert!(is_label_word("a"));
        assert!(is_label_word("A-b_c.9"));
        assert!(is_label_word(&"x".repeat(63)));
        for bad in ["", "-a", "a-", "_a", "a.", "a b", "a/b", "é"] {
            assert!(!is_label_word(bad), "{bad:?}");
        }
        assert!(!is_label_word(&"x".repeat(64)));
        assert!(validate_key("example.com/app").is_ok());
        assert!(validate_key("a/b/c").is_err(), "one prefix at most");
        assert!(validate_key("/app").is_err(), "an empty prefix");
        assert!(validate_key("example..com/app").is_err());
        assert!(validate_key(&format!("{}/app", "a".repeat(254))).is_err());
        assert!(validate_value("").is_ok());
    }

    #[test]
    fn empty_matches_everything() {
        let s = sel(&[], vec![]);
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_are_anded() {
        let s = sel(&[("app", "web"), ("tier", "fe")], vec![]);
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "fe")])));
    }

    #[test]
    fn operators() {
        let l_web = labels(&[("app", "web")]);
        let l_db = labels(&[("app", "db")]);
        let l_none = labels(&[]);
        let in_ = sel(&[], vec![expr("app", "In", Some(&["web", "api"]))]);
        assert!(in_.matches(&l_web) && !in_.matches(&l_db) && !in_.matches(&l_none));
        let not_in = sel(&[], vec![expr("app", "NotIn", Some(&["web"]))]);
        assert!(!not_in.matches(&l_web) && not_in.matches(&l_db) && not_in.matches(&l_none));
        let exists = sel(&[], vec![expr("app", "Exists", None)]);
        assert!(exists.matches(&l_web) && !exists.matches(&l_none));
        let dne = sel(&[], vec![expr("app", "DoesNotExist", Some(&[]))]);
        assert!(!dne.matches(&l_db) && dne.matches(&l_none));
        let both = sel(
            &[("app", "web")],
            vec![expr("app", "NotIn", Some(&["web"]))],
        );
        assert!(!both.matches(&l_web), "requirements are ANDed");
    }

    #[test]
    fn validation_messages() {
        let bad = |e| {
            Selector::parse(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
            .expect_err("invalid selector")
        };
        let e = bad(expr("app", "Equals", Some(&["x"])));
        assert_eq!(e[0].0, "matchExpressions[0].operator");
        assert!(
            e[0].1.contains("unsupported operator \"Equals\""),
            "{}",
            e[0].1
        );
        let e = bad(expr("app", "In", Some(&[])));
        assert_eq!(e[0].0, "matchExpressions[0].values");
        assert!(e[0].1.contains("must be specified"));
        let e = bad(expr("app", "NotIn", None));
        assert_eq!(e[0].0, "matchExpressions[0].values");
        let e = bad(expr("app", "Exists", Some(&["x"])));
        assert!(e[0].1.contains("may not be specified"));
        let e = bad(expr("", "Exists", None));
        assert_eq!(e[0].0, "matchExpressions[0].key");
        let e = bad(expr("app", "NotIn", Some(&["web", "not a value"])));
        assert_eq!(e[0].0, "matchExpressions[0].values[1]");
        assert!(e[0].1.contains("invalid label value"), "{}", e[0].1);
    }

    #[test]
    fn unchecked_values_are_kept_and_match_no_label() {
        let stored = |op: &str| {
            Selector::parse_with(
                &LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![expr("app", op, Some(&["not a value"]))]),
                },
                LabelValues::Unchecked,
            )
            .expect("accepted as stored")
        };
        let web = labels(&[("app", "web")]);
        assert!(!stored("In").matches(&web));
        assert!(stored("NotIn").matches(&web));
        assert!(stored("NotIn").matches(&labels(&[])));
    }
}
